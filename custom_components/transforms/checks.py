"""Checks on loaded images that turn bad input into a clear error naming the file, before any work is done."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from custom_components.data.errors import DatasetError
from custom_components.data.verify import shape_problem


def source_name(img) -> str:
    """The file (or files) an image was loaded from, for error messages."""
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj", "<in-memory image>")
        return ", ".join(map(str, name)) if isinstance(name, (list, tuple)) else str(name)
    return "<in-memory image>"


def is_nonzero(x: torch.Tensor) -> torch.Tensor:
    """nnU-Net crops to the region where any channel is nonzero (for CropForegroundd's `select_fn`)."""
    return x != 0


class CheckImaged(MapTransform):
    """Refuse images a bundle cannot use: wrong dimensionality or channel count, NaN or inf intensities;
    and labels (`label_key`: one key or several, such as the cascade's stage-1 prediction) whose grid differs
    from the image's or whose values are not in `dataset.json`'s labels."""

    def __init__(
        self,
        keys: Sequence[str] = ("image",),
        spatial_dims: int = 3,
        num_channels: int | None = None,
        label_key: str | Sequence[str] | None = None,
        label_values: Sequence[int] | None = None,
        affine_atol: float = 1e-3,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims
        self.num_channels = num_channels
        self.label_keys = [] if label_key is None else [label_key] if isinstance(label_key, str) else list(label_key)
        self.label_values = None if label_values is None else {int(v) for v in label_values}
        self.affine_atol = affine_atol

    def _check_image(self, img) -> None:
        name = source_name(img)
        spatial = img.ndim - 1
        if spatial != self.spatial_dims:
            raise DatasetError(f"{name}: image has {spatial} spatial dimension(s) (shape {tuple(img.shape[1:])}); this bundle needs {self.spatial_dims}D images")
        if min(img.shape[1:]) < 1:
            raise DatasetError(f"{name}: image is empty (shape {tuple(img.shape[1:])})")
        if self.spatial_dims == 3 and (problem := shape_problem(img.shape[1:])):
            raise DatasetError(f"{name}: image {problem}")
        if self.num_channels is not None and img.shape[0] != self.num_channels:
            raise DatasetError(
                f"{name}: image has {img.shape[0]} channel(s) but the plan expects {self.num_channels}; "
                "is plans.json from another dataset?"
            )
        if img.is_floating_point() and not bool(torch.isfinite(img).all()):
            bad = int((~torch.isfinite(img)).sum())
            raise DatasetError(f"{name}: image has {bad} NaN or infinite voxel value(s)")

    def _check_label(self, img, label) -> None:
        name = source_name(label)
        if tuple(label.shape[1:]) != tuple(img.shape[1:]) or label.shape[0] != 1:
            raise DatasetError(f"{name}: label shape {tuple(label.shape)} does not match image {source_name(img)} shape {tuple(img.shape[1:])}")
        if isinstance(img, MetaTensor) and isinstance(label, MetaTensor):
            a, b = img.affine.double().cpu().numpy(), label.affine.double().cpu().numpy()
            if not np.allclose(a, b, atol=self.affine_atol, rtol=1e-4):
                raise DatasetError(f"{name}: label affine differs from image {source_name(img)} affine\n{np.round(b, 4)}\nvs\n{np.round(a, 4)}")
        if label.is_floating_point() and not bool(torch.isfinite(label).all()):
            raise DatasetError(f"{name}: label has NaN or infinite values")
        if self.label_values is not None:
            found = {int(v) for v in torch.unique(label).tolist()}
            extra = sorted(found - self.label_values)
            if extra or label.is_floating_point() and not bool((label == label.round()).all()):
                raise DatasetError(f"{name}: label values {extra or 'non-integer'} are not among dataset.json's labels {sorted(self.label_values)}")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._check_image(d[key])
            for label_key in self.label_keys:
                if label_key in d:
                    self._check_label(d[key], d[label_key])
        return d
