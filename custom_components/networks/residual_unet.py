"""Deep Residual U-Net (Zhang, Liu & Wang, "Road Extraction by Deep Residual U-Net", IEEE GRSL 15(5), 2018,
arXiv:1711.10684; `shared/reference/unet-family.md`, "Residual U-Net").

U-Net's plain double convolutions are replaced by pre-activation residual units (He et al., "Identity Mappings
in Deep Residual Networks", ECCV 2016): the shortcuts ease training and let the paper reach U-Net's accuracy
with about a quarter of its parameters. MONAI's `UNet(num_res_units>0)` is post-activation (Kerfoot et al. 2018),
a different unit, hence this module.

Deliberate differences from the paper (its Table I is the 2D, 3-level, 64-128-256-512 configuration):
- Where a unit changes the channel count or the resolution, the shortcut is a 1x1 convolution (with the unit's
  stride) and a norm. The paper only says "identity mapping" and counts 15 convolutional layers; its quoted 7.8M
  parameters match this network without these projections (see `tests/test_network_residual_unet.py`).
- Depth, strides (anisotropic included), norm, dropout and the upsampling mode are configurable, so that the
  same class serves nnU-Net-style 3D plans; the default norm is InstanceNorm, the paper's is BatchNorm.
- The head returns logits (the paper ends in a sigmoid): the project's losses take logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional, Union

import torch
from monai.networks.layers.factories import Act, Conv, Dropout
from torch import nn

from custom_components.networks.layers import (NORMS, level_strides, norm_layer, per_axis, require_divisible,
                                               total_stride)

UPSAMPLE_MODES = ("nearest", "linear")


class PreActResidualUnit(nn.Module):
    """The paper's residual unit: [norm-ReLU-conv3x3] x2 plus a shortcut, added without a final
    activation, so that the identity path from input to output stays clean (pre-activation, He et al. 2016).

    Downsampling is the stride of the first convolution (the paper replaces pooling by it). The shortcut is the
    identity when the shape is unchanged, else a strided 1x1 convolution and a norm. Dropout, when asked for, sits
    between the two convolutions, as in Wide ResNet's pre-activation block; it is channel-wise (Dropout2d/3d, what
    MONAI's `Dropout` factory gives, as in MONAI's own networks).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: Union[int, Sequence[int]] = 1,
        norm: str = "instance",
        dropout: float = 0.0,
        preactivate_input: bool = True,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the unit's input.
            out_channels: channels of the unit's output (both convolutions have this many filters).
            stride: stride of the first convolution (and of the projection shortcut): an int or one per axis.
            norm: "instance" (InstanceNorm, affine) or "batch" (BatchNorm).
            dropout: probability of the dropout between the two convolutions; 0 leaves it out.
            preactivate_input: False for the network's first unit, whose conv1 takes the image itself (paper's architecture figure).
        """
        super().__init__()
        strides = per_axis(stride, spatial_dims)
        conv = Conv[Conv.CONV, spatial_dims]
        # a conv directly followed by a norm needs no bias: the norm's shift replaces it
        self.preactivation = (
            nn.Sequential(norm_layer(norm, spatial_dims, in_channels), Act[Act.RELU]()) if preactivate_input else nn.Identity()
        )
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, stride=strides, padding=1, bias=False)
        self.norm_act = nn.Sequential(norm_layer(norm, spatial_dims, out_channels), Act[Act.RELU]())
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](float(dropout)) if dropout > 0 else nn.Identity()
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=True)
        if in_channels == out_channels and max(strides) == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, kernel_size=1, stride=strides, bias=False),
                norm_layer(norm, spatial_dims, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(self.preactivation(x))
        residual = self.conv2(self.dropout(self.norm_act(residual)))
        return self.shortcut(x) + residual


class UpConcatResidualUnit(nn.Module):
    """One decoding level of the paper: upsample the coarser features, concatenate the encoder's features of this
    level, then a residual unit. The upsampling has no parameters (the paper counts only 15 convolutions); nearest
    is the default because the paper does not name an interpolation, "linear" is bilinear/trilinear."""

    def __init__(
        self,
        spatial_dims: int,
        coarse_channels: int,
        skip_channels: int,
        out_channels: int,
        scale: Union[int, Sequence[int]] = 2,
        norm: str = "instance",
        dropout: float = 0.0,
        upsample: str = "nearest",
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            coarse_channels: channels of the features coming up from the coarser level.
            skip_channels: channels of the encoder's features at this level.
            out_channels: channels of the level's output.
            scale: upsampling factor, an int or one per axis (the encoder's stride into the coarser level).
            norm: "instance" (InstanceNorm, affine) or "batch" (BatchNorm).
            dropout: dropout probability inside the residual unit; 0 leaves it out.
            upsample: "nearest" or "linear" interpolation.
        """
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        factors = tuple(float(s) for s in per_axis(scale, spatial_dims))
        if upsample == "nearest":
            self.upsample = nn.Upsample(scale_factor=factors, mode="nearest")
        else:
            mode = "bilinear" if spatial_dims == 2 else "trilinear"
            self.upsample = nn.Upsample(scale_factor=factors, mode=mode, align_corners=False)
        self.unit = PreActResidualUnit(spatial_dims, coarse_channels + skip_channels, out_channels, 1, norm, dropout)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.unit(torch.cat([skip, self.upsample(coarse)], dim=1))


class ResidualUNet(nn.Module):
    """Deep Residual U-Net (Zhang, Liu & Wang, IEEE GRSL 2018): encoder of pre-activation residual units that
    downsample by a strided first convolution, the last level being the bridge; decoder of upsample + concatenate
    + residual unit; a 1x1 convolution to `out_channels` logits. Residual units make the deep encoder-decoder easy
    to train with few filters (the paper: 7.8M parameters against U-Net's 30.6M, and better road extraction).

    The input's spatial size must divide by the per-axis product of `strides`; the output has the input's size.
    With InstanceNorm, training needs more than one voxel per channel at the bridge. TorchScript-scriptable.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (64, 128, 256, 512),
        strides: Optional[Sequence[Union[int, Sequence[int]]]] = None,
        norm: str = "instance",
        dropout: float = 0.0,
        upsample: str = "nearest",
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: image channels.
            out_channels: output channels (logits, no sigmoid or softmax).
            features: filters per level, the last one the bridge (paper, Table I: 64, 128, 256, 512).
            strides: per level as nnU-Net plans write them: strides[0] all ones, strides[i] the downsampling into
                level i (an int or one per axis, e.g. [2, 2, 1]); default 2 on every axis.
            norm: "instance" (InstanceNorm, affine; the project's default) or "batch" (BatchNorm, the paper's).
            dropout: probability of the channel dropout between the two convolutions of every residual unit (encoder,
                bridge and decoder), for MONAI Label's epistemic (Monte-Carlo dropout) scoring; 0 leaves it out.
            upsample: "nearest" (default; the paper does not name it) or "linear" (bilinear/trilinear).
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(features) < 2:
            raise ValueError(f"features needs at least one level and the bridge, got {list(features)}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.strides: List[List[int]] = level_strides(strides, len(features), spatial_dims)
        self.spatial_dims = spatial_dims
        self.divisor: List[int] = total_stride(self.strides)

        f = [int(c) for c in features]
        self.encoder = nn.ModuleList(
            [PreActResidualUnit(spatial_dims, in_channels, f[0], 1, norm, dropout, preactivate_input=False)]
            + [PreActResidualUnit(spatial_dims, f[i - 1], f[i], self.strides[i], norm, dropout) for i in range(1, len(f))]
        )
        # deepest first: decoder[k] brings level L-1-k up to level L-2-k
        self.decoder = nn.ModuleList(
            [
                UpConcatResidualUnit(spatial_dims, f[i], f[i - 1], f[i - 1], self.strides[i], norm, dropout, upsample)
                for i in range(len(f) - 1, 0, -1)
            ]
        )
        self.head = Conv[Conv.CONV, spatial_dims](f[0], out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError("input must be (B, C, *spatial) with spatial_dims spatial axes")
        require_divisible(x, self.divisor)
        skips: List[torch.Tensor] = []
        for unit in self.encoder:
            x = unit(x)
            skips.append(x)
        deepest = len(skips) - 1  # the bridge
        for k, up in enumerate(self.decoder):
            x = up(x, skips[deepest - 1 - k])
        return self.head(x)
