"""The extra input channels of the cascade's full-resolution stage (`shared/reference/unet-family.md`, "Cascade").

Stage 2 of nnU-Net's 3D cascade sees the image plus the stage-1 segmentation, one-hot encoded without the
background (nnU-Net's `MoveSegAsOneHotToData` with the foreground labels). During training these channels are
perturbed so that stage 2 learns to correct stage 1 rather than copy it (nnU-Net v2's
`ApplyRandomBinaryOperatorTransform`, p=0.4, ball radius 1-8, and
`RemoveRandomConnectedComponentFromOneHotEncodingTransform`, p=0.2, components under 15% of the patch).

In a training pipeline `prev_seg` is a label map that follows the label through the spatial transforms
(nearest-neighbour interpolation); after them:
`PreviousStageOneHotd` -> `RandPerturbPreviousStaged` -> MONAI `ConcatItemsd(["image", "prev_seg"], "image")`.
MONAI's `ConcatItemsd` keeps the image's MetaTensor metadata and applied operations (so `Invertd` still
works), which is why this module has no concatenation transform of its own.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage

BINARY_OPERATIONS = ("dilation", "erosion", "opening", "closing")


def _with_meta(out: torch.Tensor, like) -> torch.Tensor:
    """`out` carrying the metadata and applied operations of `like` when that is a MetaTensor."""
    if isinstance(like, MetaTensor):
        return MetaTensor(out, meta=like.meta, applied_operations=like.applied_operations)
    return out


def foreground_onehot(label_map: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(1, *spatial) label map -> (num_classes - 1, *spatial) float32 one-hot of labels 1..num_classes-1."""
    labels = label_map.as_tensor() if isinstance(label_map, MetaTensor) else torch.as_tensor(label_map)
    if labels.shape[0] != 1:
        raise ValueError(f"previous-stage segmentation must have one channel (a label map), got shape {tuple(labels.shape)}")
    labels = torch.round(labels[0].float()).long()  # label maps that went through float transforms
    classes = torch.arange(1, int(num_classes), device=labels.device).view(-1, *([1] * labels.dim()))
    return (labels[None] == classes).float()


class PreviousStageOneHotd(MapTransform):
    """Stage-1 label map (1, *spatial) -> float one-hot of its foreground classes (num_classes - 1, *spatial).

    Background is dropped as in nnU-Net (`foreground_labels`); labels outside 1..num_classes-1 give all-zero
    channels. MetaTensor metadata and applied operations are kept. 2D and 3D.
    """

    def __init__(self, keys: KeysCollection = "prev_seg", num_classes: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must count the background and at least one foreground class, got {num_classes}")
        self.num_classes = int(num_classes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            onehot = foreground_onehot(d[key], self.num_classes)
            d[key] = onehot.numpy() if isinstance(d[key], np.ndarray) else _with_meta(onehot, d[key])
        return d


def _around(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of a non-empty `mask`, grown by `margin` voxels and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros_like(mask)
    if mask.any():
        box = _around(mask, radius)  # nothing further than `radius` from the mask can join it
        out[box] = ndimage.distance_transform_edt(~mask[box]) <= radius  # distance to the nearest foreground voxel
    return out


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros_like(mask)
    if mask.any():
        box = _around(mask, radius)  # background further than `radius` cannot erode the mask
        inner = mask[box]
        out[box] = inner if inner.all() else ndimage.distance_transform_edt(inner) > radius  # to the nearest background
    return out


def binary_morphology(mask: np.ndarray, operation: str, radius: int) -> np.ndarray:
    """Binary dilation, erosion, opening or closing of `mask` (2D or 3D) by a disk/ball of integer `radius`
    (the offsets d with |d| <= radius, as skimage's `disk`/`ball`).

    Computed by thresholding Euclidean distance transforms over the mask's bounding box grown by the radius, so
    the cost does not grow with the ball (128^3 patch, radius 8: scipy's `binary_dilation` ~3 s, this ~0.2 s).
    Borders follow skimage, which nnU-Net uses: outside the array is background for dilation and foreground
    for erosion (a structure cut by the patch border is not eroded from there).
    """
    mask = np.asarray(mask, dtype=bool)
    radius = int(radius)
    if operation == "dilation":
        return _dilate(mask, radius)
    if operation == "erosion":
        return _erode(mask, radius)
    if operation == "opening":
        return _dilate(_erode(mask, radius), radius)
    if operation == "closing":
        return _erode(_dilate(mask, radius), radius)
    raise ValueError(f"unknown binary operation {operation!r}; expected one of {BINARY_OPERATIONS}")


class RandPerturbPreviousStaged(Randomizable, MapTransform):
    """nnU-Net's training-time perturbation of the one-hot previous-stage channels (C, *spatial), 2D or 3D.

    1. Channels in random order; each with probability `morphology_prob`: a random operation out of
       `operations` with a disk/ball of integer radius uniform in 1..`max_radius` (`binary_morphology`).
       Voxels a channel gains are cleared in the other channels, so the encoding stays one-hot.
    2. Each channel with probability `removal_prob`: one connected component (full connectivity, as skimage's
       `label`) chosen uniformly among those smaller than `max_component_fraction` of the patch is cleared
       (to background).
    Empty channels are left alone. Deviations from nnU-Net v2: it draws each probability once per sample and
    then perturbs every channel (identical with one foreground class), and draws a real radius in [1, 8).
    `max_radius` stays at nnU-Net's 8 by default: the distance-transform morphology costs about the same for any
    radius (~0.2 s per operation on a 128^3 patch).
    """

    def __init__(
        self,
        keys: KeysCollection = "prev_seg",
        morphology_prob: float = 0.4,
        removal_prob: float = 0.2,
        max_radius: int = 8,
        max_component_fraction: float = 0.15,
        operations: tuple[str, ...] = BINARY_OPERATIONS,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        unknown = [op for op in operations if op not in BINARY_OPERATIONS]
        if unknown or not operations:
            raise ValueError(f"operations must be a non-empty subset of {BINARY_OPERATIONS}, got {operations}")
        if int(max_radius) < 1:
            raise ValueError(f"max_radius must be >= 1, got {max_radius}")
        self.morphology_prob = float(morphology_prob)
        self.removal_prob = float(removal_prob)
        self.max_radius = int(max_radius)
        self.max_component_fraction = float(max_component_fraction)
        self.operations = tuple(operations)

    def randomize(self, data=None) -> None:
        """Nothing to draw up front: the draws depend on each channel's content and happen in `perturb`."""

    def perturb(self, onehot: np.ndarray) -> np.ndarray:
        """Perturbed copy of a (C, *spatial) binary array (any dtype; returned as bool)."""
        out = np.asarray(onehot) > 0.5  # a new array: the input is never modified
        for c in self.R.permutation(len(out)):
            if self.R.rand() >= self.morphology_prob:
                continue
            operation = self.operations[self.R.randint(len(self.operations))]
            radius = int(self.R.randint(1, self.max_radius + 1))
            if not out[c].any():
                continue
            changed = binary_morphology(out[c], operation, radius)
            gained = changed & ~out[c]
            out[:, gained] = False
            out[c] = changed
        max_voxels = self.max_component_fraction * out[0].size if len(out) else 0
        structure = np.ones((3,) * (out.ndim - 1), dtype=bool)
        for c in range(len(out)):
            if self.R.rand() >= self.removal_prob or not out[c].any():
                continue
            components, n = ndimage.label(out[c], structure=structure)
            sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
            candidates = np.flatnonzero(sizes < max_voxels) + 1
            if len(candidates):
                out[c][components == candidates[self.R.randint(len(candidates))]] = False
        return out

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            x = d[key]
            tensor = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
            perturbed = torch.from_numpy(self.perturb(tensor.detach().cpu().numpy())).to(device=tensor.device, dtype=tensor.dtype)
            if isinstance(x, np.ndarray):
                d[key] = perturbed.numpy()
            else:
                d[key] = _with_meta(perturbed, x)
        return d
