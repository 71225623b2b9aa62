"""Convert the DICOM series under a folder into NIfTI cases, for training (nnU-Net naming, one channel).

    python -m scripts.dicom_to_nifti --input_dir DICOM --output_dir D/imagesTr [--series_uid UID] [--channel 0]

Every series found under DICOM (any depth) is checked (whole, evenly spaced, pixel data present and decodable)
and written as `<PatientID>_<SeriesNumber>_<channel:04d>.nii.gz` (the names made safe and unique), in patient
space (RAS affine). `conversion.json` beside them maps each case to its series. Existing files are never
overwritten; one bad series stops the conversion with its reason, before anything is written.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import fire
import numpy as np

from custom_components.data.dicom import check_series, list_series, read_series_image
from custom_components.data.errors import DatasetError
from custom_components.io_utils import atomic_save_nifti, atomic_write_json


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-") or "case"


def series_to_nifti(series, path: Path) -> None:
    """Write a checked series as NIfTI through MONAI's ITK reader, so its affine is MONAI's (RAS)."""
    import nibabel as nib
    from monai.data import ITKReader

    reader = ITKReader()
    array, meta = reader.get_data(read_series_image(series))
    atomic_save_nifti(nib.Nifti1Image(np.asarray(array), np.asarray(meta["affine"], dtype=float)), path)


def main(input_dir: str, output_dir: str, series_uid: str | None = None, channel: int = 0) -> None:
    """Check every series first, then write them all."""
    try:
        found = list_series(input_dir)
        if series_uid is not None:
            if series_uid not in found:
                raise DatasetError(f"{input_dir}: no series {series_uid}")
            found = {series_uid: found[series_uid]}
        checked = [check_series(Path(items[0][0]).parent, uid, items) for uid, items in found.items()]
        out = Path(output_dir)
        index = out / "conversion.json"  # earlier conversions into the same folder stay listed
        previous = json.loads(index.read_text()) if index.is_file() else {}
        names, plan = set(), []
        for s in checked:
            base = f"{_safe(s.patient_id)}_{_safe(s.series_number or '0')}"
            name, k = base, 1
            while name in names:
                k += 1
                name = f"{base}-{k}"
            names.add(name)
            path = out / f"{name}_{channel:04d}.nii.gz"
            if path.exists() or name in previous:
                raise DatasetError(f"{path} exists: refusing to overwrite it (choose another --output_dir)")
            plan.append((s, name, path))
        records = {}
        for s, name, path in plan:
            series_to_nifti(s, path)
            records[name] = {"file": path.name, "series_uid": s.uid, "modality": s.modality, "description": s.description,
                             "slices": len(s.files), "source": str(Path(s.files[0]).parent)}
            print(f"{name}: {len(s.files)} slices of series {s.uid} ({s.modality} '{s.description}') -> {path}")
        atomic_write_json(index, {**previous, **records})
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    fire.Fire(main)
