"""Training a 2D network on 3D volumes: crop a one-slice patch, then drop the slice axis."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


def volume_patch(patch_size: Sequence[int], slice_axis: int | None) -> list[int]:
    """The 3D crop that holds one patch: the 2D patch with a 1 inserted at the slice axis (3D patches unchanged)."""
    patch = [int(p) for p in patch_size]
    if slice_axis is None:
        return patch
    return patch[: int(slice_axis)] + [1] + patch[int(slice_axis):]


class SqueezeSliceAxisd(MapTransform):
    """(C, X, Y, Z) with one voxel along the slice axis -> (C, a, b); identity when `slice_axis` is None."""

    def __init__(self, keys: KeysCollection, slice_axis: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_axis = None if slice_axis is None else int(slice_axis)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.slice_axis is None:
            return d
        for key in self.key_iterator(d):
            x = d[key]
            if x.shape[self.slice_axis + 1] != 1:
                raise ValueError(f"{key}: expected one slice along axis {self.slice_axis}, got shape {tuple(x.shape)}")
            d[key] = x.squeeze(self.slice_axis + 1)
        return d
