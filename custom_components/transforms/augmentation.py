"""nnU-Net's data augmentation from MONAI transforms (table in `shared/reference/unet-family.md`).

Rotation, scaling and elastic deformation act in-plane only when the plan says the patch is anisotropic
("dummy 2D"): the coarse axis is folded into the channels, so that one 2D deformation moves every slice
alike and nothing is interpolated through-plane.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
)


class InPlaned(Randomizable, MapTransform):
    """Apply a 2D dictionary transform to every slice of a 3D volume at once, by folding the coarse axis
    into the channel axis: (C, X, Y, Z) with coarse axis Z becomes (C*Z, X, Y) and back."""

    def __init__(self, keys: KeysCollection, transform, coarse_axis: int) -> None:
        super().__init__(keys)
        self.transform = transform
        self.coarse_axis = int(coarse_axis)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        shapes = {}
        for key in self.key_iterator(d):
            x = d[key]
            moved = torch.movedim(torch.as_tensor(x), self.coarse_axis + 1, 1)  # (C, Z, a, b)
            shapes[key] = (moved.shape, x)
            d[key] = moved.reshape(-1, *moved.shape[2:]).as_tensor() if isinstance(moved, MetaTensor) else moved.reshape(-1, *moved.shape[2:])
        d = self.transform(d)
        for key, (shape, orig) in shapes.items():
            out = torch.as_tensor(d[key]).reshape(shape)
            out = torch.movedim(out, 1, self.coarse_axis + 1)
            d[key] = MetaTensor(out, meta=orig.meta) if isinstance(orig, MetaTensor) else out
        return d


def _radians(deg: float) -> float:
    return math.radians(float(deg))


def spatial_augmentation(
    keys: Sequence[str],
    modes: Sequence[str],
    dummy_2d: bool,
    coarse_axis: int | None,
    rotation_degrees: float = 15.0,
    rotation_prob: float = 0.2,
    scale_range: Sequence[float] = (0.85, 1.25),
    scale_prob: float = 0.2,
    elastic_prob: float = 0.2,
    elastic_sigma: Sequence[float] = (9.0, 13.0),
    elastic_magnitude: Sequence[float] = (0.0, 900.0),
    spatial_dims: int = 3,
) -> Compose:
    """Rotation, scaling and elastic deformation, each with its own probability (nnU-Net samples them
    independently), in 3D or in-plane."""
    rot = _radians(rotation_degrees)
    scale = (float(scale_range[0]) - 1.0, float(scale_range[1]) - 1.0)
    in_plane = bool(dummy_2d) and coarse_axis is not None and spatial_dims == 3
    pad = "zeros"
    if in_plane:
        modes2d = list(modes)
        return Compose([
            InPlaned(keys, RandAffined(keys, prob=rotation_prob, rotate_range=(rot,), mode=modes2d, padding_mode=pad), coarse_axis),
            InPlaned(keys, RandAffined(keys, prob=scale_prob, scale_range=(scale, scale), mode=modes2d, padding_mode=pad), coarse_axis),
            InPlaned(keys, RandElastic2Dd(keys, elastic_prob, elastic_sigma, elastic_magnitude, modes2d), coarse_axis),
        ])
    n = spatial_dims
    return Compose([
        RandAffined(keys, prob=rotation_prob, rotate_range=(rot,) * (1 if n == 2 else 3), mode=list(modes), padding_mode=pad),
        RandAffined(keys, prob=scale_prob, scale_range=(scale,) * n, mode=list(modes), padding_mode=pad),
        Rand3DElasticd(keys, sigma_range=tuple(elastic_sigma), magnitude_range=tuple(elastic_magnitude), prob=elastic_prob,
                       mode=list(modes), padding_mode=pad)
        if n == 3 else RandElastic2Dd(keys, elastic_prob, elastic_sigma, elastic_magnitude, list(modes)),
    ])


class RandElastic2Dd(Randomizable, MapTransform):
    """nnU-Net's elastic deformation in 2D: smoothed uniform noise (sigma in voxels) times alpha.

    The 2D counterpart of MONAI's Rand3DElasticd (a smoothed dense noise field), which MONAI has only in 3D:
    MONAI's Rand2DElastic deforms a coarse control grid instead."""

    def __init__(self, keys, prob, sigma, magnitude, modes) -> None:
        MapTransform.__init__(self, keys)
        self.prob, self.sigma, self.magnitude, self.modes = prob, tuple(sigma), tuple(magnitude), list(modes)
        self._do = False

    def randomize(self, data=None) -> None:
        self._do = self.R.rand() < self.prob
        self._sigma = self.R.uniform(*self.sigma)
        self._mag = self.R.uniform(*self.magnitude)

    def __call__(self, data):
        self.randomize()
        d = dict(data)
        if not self._do:
            return d
        from monai.networks.layers import GaussianFilter

        first = d[self.keys[0]]
        size = first.shape[1:]
        noise = torch.as_tensor(self.R.uniform(-1, 1, (2, *size)), dtype=torch.float32)
        field = GaussianFilter(2, self._sigma)(noise[None])[0] * self._mag  # displacement in voxels
        grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in size], indexing="ij")) + field
        # normalise to [-1, 1] (align_corners=True), x/y order reversed for grid_sample
        norm = torch.stack([2 * grid[i] / max(size[i] - 1, 1) - 1 for i in range(2)])
        sample_grid = norm.flip(0).permute(1, 2, 0)[None]
        for key, mode in zip(self.keys, self.modes):
            x = torch.as_tensor(d[key]).float()
            out = torch.nn.functional.grid_sample(x[None], sample_grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
            d[key] = MetaTensor(out, meta=d[key].meta) if isinstance(d[key], MetaTensor) else out
        return d


def intensity_augmentation(keys: Sequence[str], spatial_dims: int = 3) -> Compose:
    """nnU-Net's intensity augmentations (image only): noise, blur, brightness, contrast, low resolution, gamma."""
    return Compose([
        RandGaussianNoised(keys, prob=0.1, mean=0.0, std=math.sqrt(0.1), sample_std=True),
        RandGaussianSmoothd(keys, prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        RandScaleIntensityd(keys, prob=0.15, factors=0.25),
        RandScaleIntensityFixedMeand(keys, prob=0.15, factors=0.25, fixed_mean=True, preserve_range=True),
        RandSimulateLowResolutiond(keys, prob=0.25, zoom_range=(0.5, 1.0), upsample_mode="trilinear" if spatial_dims == 3 else "bilinear"),
        RandAdjustContrastd(keys, prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
        RandAdjustContrastd(keys, prob=0.3, gamma=(0.7, 1.5), invert_image=False, retain_stats=True),
    ])


def mirroring(keys: Sequence[str], spatial_dims: int = 3, prob: float = 0.5) -> Compose:
    """Mirror each spatial axis with probability 0.5."""
    return Compose([RandFlipd(keys, prob=prob, spatial_axis=a) for a in range(spatial_dims)])
