"""A deterministic synthetic CT dataset: the embedded default that the quickstart and the tests run on.

Each case is an abdomen-like slab in Hounsfield units: air around an elliptic body of soft tissue with a fat
rim, a large lobulated "organ" (label 1) and one to three small enhancing "lesions" (label 2) inside it.
Shapes are drawn in millimetres, so that they keep their physical size while the voxel grid (size and
spacing) varies from case to case; the through-plane spacing is 3.5-5x the in-plane spacing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from custom_components.data.errors import DatasetError
from custom_components.io_utils import atomic_write_json, atomic_save_nifti

LABELS = {"background": 0, "organ": 1, "lesion": 2}
DEMO_NAME = "Demo_SynthCT"
HU = {"air": -1000.0, "fat": -90.0, "tissue": 25.0, "organ": 85.0, "lesion": 160.0}


def _grid(shape: tuple[int, int, int], spacing: np.ndarray) -> tuple[np.ndarray, ...]:
    """Voxel-centre coordinates in mm, centred on the volume."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def synth_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case: (image in HU as int16, label as uint8, affine)."""
    inplane = rng.uniform(0.75, 0.95)
    spacing = np.array([inplane, inplane, rng.uniform(3.3, 4.2)])
    shape = (int(rng.integers(64, 81)), int(rng.integers(64, 81)), int(rng.integers(14, 21)))
    x, y, z = _grid(shape, spacing)
    fov_x, fov_y = shape[0] * spacing[0] / 2, shape[1] * spacing[1] / 2

    body = (x / (0.92 * fov_x)) ** 2 + (y / (0.85 * fov_y)) ** 2 <= 1.0
    fat = body & ((x / (0.80 * fov_x)) ** 2 + (y / (0.73 * fov_y)) ** 2 > 1.0)

    # organ: an ellipsoid whose radius is modulated by low-frequency harmonics (lobulated, varied per case)
    centre = rng.uniform(-0.15, 0.15, 3) * np.array([fov_x, fov_y, 6.0])
    radii = np.array([rng.uniform(0.48, 0.62) * fov_x, rng.uniform(0.42, 0.55) * fov_y, rng.uniform(18.0, 26.0)])
    dx, dy, dz = (x - centre[0]) / radii[0], (y - centre[1]) / radii[1], (z - centre[2]) / radii[2]
    theta = np.arctan2(dy, dx)
    wobble = 1.0 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    organ = body & (np.sqrt(dx**2 + dy**2 + dz**2) <= wobble)

    lesion = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(4.5, 8.0)
        c = centre + rng.uniform(-0.45, 0.45, 3) * radii * np.array([1, 1, 0.5])
        elong = rng.uniform(0.8, 1.25, 3)
        lesion |= (((x - c[0]) / (r * elong[0])) ** 2 + ((y - c[1]) / (r * elong[1])) ** 2
                   + ((z - c[2]) / (r * elong[2])) ** 2) <= 1.0
    lesion &= organ

    image = np.full(shape, HU["air"], np.float32)
    image[body] = HU["tissue"]
    image[fat] = HU["fat"]
    image[organ] = HU["organ"] + rng.uniform(-10, 10)
    image[lesion] = HU["lesion"] + rng.uniform(-20, 20)
    # partial volume (blur, stronger through-plane in voxels is not needed: sigma in voxels) and scanner noise
    image = gaussian_filter(image, sigma=(0.7, 0.7, 0.4))
    image += rng.normal(0.0, 12.0, shape).astype(np.float32)

    label = np.zeros(shape, np.uint8)
    label[organ] = LABELS["organ"]
    label[lesion] = LABELS["lesion"]

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = rng.uniform(-200, 200, 3)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), label, affine


def check_demo_options(out: Path, n_train, n_test, seed) -> None:
    for name, value, least in (("n_train", n_train, 1), ("n_test", n_test, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise DatasetError(f"--{name} {value!r}: expected a whole number >= {least}")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        meta = out / "dataset.json"
        try:
            is_demo = json.loads(meta.read_text()).get("name") == DEMO_NAME
        except (OSError, ValueError, AttributeError):
            is_demo = False
        if not is_demo:
            raise DatasetError(f"{out}: the folder is not empty and holds no demo dataset; refusing to write into it "
                               "(choose a new --output_dir)")


def make_demo_dataset(output_dir: str | os.PathLike, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    """Write the demo dataset in the nnU-Net v2 layout (`_0000` channel suffix, labelsTs included). A folder that
    holds anything but an earlier demo dataset is refused: the demo never writes over someone's data."""
    out = Path(output_dir)
    check_demo_options(out, n_train, n_test, seed)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_train + n_test):
        image, label, affine = synth_case(rng)
        split = "Tr" if i < n_train else "Ts"
        case = f"demo_{i:03d}"
        atomic_save_nifti(nib.Nifti1Image(image, affine), out / f"images{split}" / f"{case}_0000.nii.gz")
        atomic_save_nifti(nib.Nifti1Image(label, affine), out / f"labels{split}" / f"{case}.nii.gz")
    atomic_write_json(out / "dataset.json", {
        "name": DEMO_NAME,
        "description": "Synthetic abdominal CT slabs (HU) with a lobulated organ and small enhancing lesions",
        "licence": "CC0",
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    })
    return out
