"""nnU-Net's resampling to a target spacing, and its exact inverse for predictions.

When the data is anisotropic (max/min spacing > 3 with one low-resolution axis), images are resampled
cubic in-plane, slice by slice, and nearest along the low-resolution axis ("separate z"); otherwise cubic
in 3D. Labels are resampled one class at a time as binary masks with linear interpolation, thresholded at
0.5. Probabilities go back linear in-plane and nearest through-plane. Voxel grids are aligned by voxel
area (scipy's `grid_mode=True`): output voxel centre j sits at input coordinate (j + 0.5) * old/new - 0.5.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from scipy.ndimage import zoom

ANISO_THRESHOLD = 3.0


def spacing_from_affine(affine) -> np.ndarray:
    """Voxel size along each array axis: the length of each affine column."""
    a = np.asarray(affine, dtype=np.float64)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def output_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    return [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target)]


def separate_axis(spacing: Sequence[float], target: Sequence[float], threshold: float = ANISO_THRESHOLD) -> int | None:
    """The low-resolution axis to treat separately, or None (nnU-Net checks the current, then the target spacing)."""
    for sp in (np.asarray(spacing, float), np.asarray(target, float)):
        if sp.max() / sp.min() > threshold:
            low = np.flatnonzero(sp == sp.max())  # nnU-Net: the axes at the largest spacing
            return int(low[0]) if len(low) == 1 else None
    return None


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Nearest input voxel for each output voxel under area alignment."""
    return np.clip(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), 0, n_in - 1)


def resample_volume(volume: np.ndarray, new_shape: Sequence[int], order: int, axis: int | None, order_axis: int = 0) -> np.ndarray:
    """Resample one 3D array; with `axis` set, `order` applies in-plane and `order_axis` along `axis`."""
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(volume.shape) == new_shape:
        return volume.copy()
    if axis is None:
        factors = [n / o for n, o in zip(new_shape, volume.shape)]
        return zoom(volume, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    moved = np.moveaxis(volume, axis, 0)
    plane_shape = [n for i, n in enumerate(new_shape) if i != axis]
    factors = [n / o for n, o in zip(plane_shape, moved.shape[1:])]
    if list(moved.shape[1:]) == plane_shape:
        planes = moved
    else:
        planes = np.stack([zoom(s, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1) for s in moved])
    n_in, n_out = planes.shape[0], new_shape[axis]
    if n_in != n_out:
        if order_axis == 0:
            planes = planes[_nearest_indices(n_in, n_out)]
        else:
            planes = zoom(planes, [n_out / n_in, 1, 1], order=order_axis, mode="nearest", grid_mode=True, prefilter=False)
    return np.moveaxis(planes, 0, axis)


def resample_image(image: np.ndarray, new_shape: Sequence[int], axis: int | None) -> np.ndarray:
    """Channel-first image: cubic (in-plane when `axis` is set), nearest along `axis`."""
    return np.stack([resample_volume(c.astype(np.float32), new_shape, 3, axis) for c in image]).astype(np.float32)


def resample_label(label: np.ndarray, new_shape: Sequence[int], axis: int | None) -> np.ndarray:
    """Channel-first label map: each class as a binary mask, linear, thresholded at 0.5."""
    lab = label[0]
    out = np.zeros(tuple(new_shape), dtype=lab.dtype)
    for c in np.unique(lab):
        if c == 0:
            continue
        mask = resample_volume((lab == c).astype(np.float32), new_shape, 1, axis)
        out[mask >= 0.5] = c
    return out[None]


def resample_probabilities(probs: np.ndarray, new_shape: Sequence[int], axis: int | None) -> np.ndarray:
    """Channel-first soft predictions: linear (in-plane when `axis` is set), nearest along `axis`."""
    return np.stack([resample_volume(c.astype(np.float32), new_shape, 1, axis) for c in probs]).astype(np.float32)


def resampled_affine(affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """Affine of the resampled grid under area alignment (same field of view, new voxel size)."""
    scale = np.array([o / n for o, n in zip(old_shape, new_shape)], dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(scale)
    m[:3, 3] = (scale - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64) @ m


def _meta_without_affine(img) -> dict:
    meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
    meta.pop("affine", None)
    return meta


class AnisotropicResampled(MapTransform, InvertibleTransform):
    """Resample images and labels to the plan's target spacing, nnU-Net style, and invert it for predictions.

    `inverse` brings a channel-first float prediction (probabilities) back to the original grid and affine,
    linear in-plane and nearest through-plane, so that `Invertd` returns predictions in the input's geometry.
    """

    def __init__(
        self,
        keys: KeysCollection,
        target_spacing: Sequence[float],
        label_keys: KeysCollection = (),
        aniso_threshold: float = ANISO_THRESHOLD,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.target_spacing = [float(s) for s in target_spacing]
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        self.aniso_threshold = aniso_threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key] if isinstance(d[key], MetaTensor) else MetaTensor(d[key])
            affine = img.affine.detach().cpu().numpy().astype(np.float64)
            old_shape = list(img.shape[1:])
            spacing = spacing_from_affine(affine)
            if len(self.target_spacing) != len(old_shape):
                raise ValueError(f"target spacing {self.target_spacing} has {len(self.target_spacing)} axes, image {key} has {len(old_shape)}")
            # a non-positive target keeps that axis' own spacing (the 2D configuration's slice axis)
            target = [float(sp) if t <= 0 else t for sp, t in zip(spacing, self.target_spacing)]
            new_shape = output_shape(old_shape, spacing, target)
            axis = separate_axis(spacing, target, self.aniso_threshold)
            arr = img.detach().cpu().numpy()
            if key in self.label_keys:
                out = resample_label(arr, new_shape, axis)
            else:
                out = resample_image(arr, new_shape, axis)
            new = MetaTensor(torch.as_tensor(out), affine=torch.as_tensor(resampled_affine(affine, old_shape, new_shape)), meta=_meta_without_affine(img))
            new.applied_operations = list(img.applied_operations)
            d[key] = self.push_transform(
                new, orig_size=old_shape, extra_info={"orig_affine": affine.tolist(), "separate_axis": -1 if axis is None else axis}
            )
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            xform = self.pop_transform(d[key])
            orig_shape = [int(n) for n in xform["orig_size"]]
            extra = xform["extra_info"]
            axis = None if int(extra["separate_axis"]) < 0 else int(extra["separate_axis"])
            img = d[key]
            arr = img.detach().cpu().numpy()
            if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
                out = np.stack([resample_volume(c, orig_shape, 0, axis) for c in arr])
            else:
                out = resample_probabilities(arr, orig_shape, axis)
            new = MetaTensor(torch.as_tensor(out), affine=torch.as_tensor(np.asarray(extra["orig_affine"])), meta=_meta_without_affine(img))
            new.applied_operations = list(img.applied_operations)
            d[key] = new
        return d
