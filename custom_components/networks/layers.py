"""Helpers shared by the U-Net family networks (`attention_unet`, `multires_unet`, `nonlocal_unet`, `residual_unet`).

Why one module: the four networks take the same `norm` option and the same nnU-Net-style per-level, per-axis
`strides`, so they build norms and read strides here, and accept and reject those options alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional, Union

import torch
from monai.networks.layers.factories import Norm
from torch import nn

__all__ = ["NORMS", "norm_layer", "per_axis", "level_strides"]

NORMS = ("instance", "batch")


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """"instance" -> InstanceNorm with affine parameters (the project's default, so that it has BatchNorm's learnt
    scale and shift), "batch" -> BatchNorm (what the papers use); anything else is a ValueError."""
    if norm == "instance":
        return Norm[Norm.INSTANCE, spatial_dims](channels, affine=True)
    if norm == "batch":
        return Norm[Norm.BATCH, spatial_dims](channels)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def per_axis(stride: Union[int, Sequence[int]], spatial_dims: int) -> List[int]:
    """One stride (or scale factor) as nnU-Net plans write it, an int or one int per axis -> one positive int per
    axis, so that anisotropic strides such as [2, 2, 1] and plain 2 both work."""
    values = [int(stride)] * spatial_dims if isinstance(stride, int) else [int(s) for s in stride]
    if len(values) != spatial_dims or min(values) < 1:
        raise ValueError(f"stride {stride!r} needs {spatial_dims} positive entries")
    return values


def level_strides(
    strides: Optional[Sequence[Union[int, Sequence[int]]]], num_levels: int, spatial_dims: int
) -> List[List[int]]:
    """nnU-Net-style `strides`, one entry per resolution level -> one per-axis list per level.

    strides[0] is the input level and must be all ones; strides[i] is the downsampling from level i-1 to level i.
    None means 2 on every axis at every level after the first. The networks keep the result as `self.strides`,
    which `cascade.stride_product` reads.
    """
    if strides is None:
        strides = [1] + [2] * (num_levels - 1)
    if len(strides) != num_levels:
        raise ValueError(f"strides needs one entry per level ({num_levels}), got {len(strides)}")
    out: List[List[int]] = []
    for level, stride in enumerate(strides):
        try:
            out.append(per_axis(stride, spatial_dims))
        except ValueError as error:
            raise ValueError(f"strides[{level}]: {error}") from None
    if max(out[0]) != 1:
        raise ValueError(f"strides[0] is the input level and must be all ones, got {out[0]}")
    return out


def total_stride(strides: Sequence[Sequence[int]]) -> List[int]:
    """Per-axis product of per-level strides: the factor a network's input size must divide by."""
    total = [1] * len(strides[0])
    for stride in strides:
        total = [t * int(s) for t, s in zip(total, stride)]
    return total


def require_divisible(x: torch.Tensor, divisor: List[int]) -> None:
    """Refuse an input whose spatial size does not divide by `divisor` (scripted with the networks' forward)."""
    spatial = x.shape[2:]
    for axis in range(len(divisor)):
        if spatial[axis] % divisor[axis] != 0:
            raise ValueError("input spatial size " + str(list(spatial)) + " is not divisible by the stride product "
                             + str(divisor) + " (it must divide on every axis)")
