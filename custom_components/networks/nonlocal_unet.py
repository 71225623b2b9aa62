"""Non-local U-Net (Wang, Zou, Shen, Ji, "Non-local U-Nets for Biomedical Image Segmentation", AAAI 2020;
reference code: divelab/Non-local-U-Nets; `shared/reference/unet-family.md`, section 2).

Why this network: a U-Net gathers long-range context only by stacking local convolutions and down-sampling
many times. The paper replaces the deep encoder with a global aggregation block (multi-head self-attention
over all voxels), so a shallow U-Net (two down-samplings) sees the whole patch with few parameters; the same
block, with a strided or transposed-conv query, also down- or up-samples.

Where we follow the reference code rather than the paper's text, and why:
- up-sampling global aggregation only in the deepest decoder level (`attention_up_levels=1`): at the finer
  levels the attention matrix grows with the square of the voxel count; `attention_up_levels` restores the
  paper's figure (every up-sampling block) when memory allows;
- heads: 2 in the bottom block, 1 in the up-sampling blocks; key = value = output depth = the level's channels;
  attention dropout 0.5; every residual block of the encoder has a 1x1 projection shortcut (even when the shape
  is unchanged); convolutions outside the aggregation blocks have no bias.
Our own choices: the project's InstanceNorm by default (`norm="batch"` is the paper's), PyTorch's default
initialisation and BatchNorm momentum (the code uses a truncated normal and TF momentum 0.997), per-axis strides
(nnU-Net plans), and padding 1 on both sides for the strided convolutions (TF "same" pads the far side only,
which shifts the sampling grid by one input voxel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional, Union

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from custom_components.networks.layers import level_strides, norm_layer, per_axis, require_divisible, total_stride

__all__ = [
    "PreActResidualBlock",
    "GlobalAggregationBlock",
    "BottomBlock",
    "UpSamplingAggregation",
    "UpSamplingBlock",
    "OutputBlock",
    "NonLocalUNet",
]


def transposed_conv(spatial_dims: int, in_channels: int, out_channels: int, stride: List[int], bias: bool) -> nn.Module:
    """3x3(x3) transposed conv whose output is exactly `stride` times the input on each axis (TF "same")."""
    return Conv[Conv.CONVTRANS, spatial_dims](
        in_channels, out_channels, kernel_size=3, stride=stride, padding=1,
        output_padding=[s - 1 for s in stride], bias=bias,
    )


class PreActResidualBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016) as in the paper's residual blocks: norm-ReLU6-conv twice; the
    projection shortcut reads the activated input, so one normalisation serves both branches."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: Union[int, Sequence[int]] = 1,
        norm: str = "instance",
        projection: Optional[bool] = None,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            out_channels: output channels.
            stride: per-axis stride of the first conv and of the shortcut (>1 down-samples).
            norm: "instance" or "batch".
            projection: 1x1 conv shortcut; None = only when the shape changes (the encoder passes True, as the code).
        """
        super().__init__()
        stride_list = per_axis(stride, spatial_dims)
        if projection is None:
            projection = in_channels != out_channels or any(s != 1 for s in stride_list)
        elif not projection and (in_channels != out_channels or any(s != 1 for s in stride_list)):
            raise ValueError("an identity shortcut needs in_channels == out_channels and stride 1")
        conv = Conv[Conv.CONV, spatial_dims]
        self.norm1 = norm_layer(norm, spatial_dims, in_channels)
        self.act1 = nn.ReLU6()
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, stride=stride_list, padding=1, bias=False)
        self.norm2 = norm_layer(norm, spatial_dims, out_channels)
        self.act2 = nn.ReLU6()
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = (
            conv(in_channels, out_channels, kernel_size=1, stride=stride_list, bias=False) if projection else nn.Identity()
        )
        self.projection = bool(projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act1(self.norm1(x))
        shortcut = self.shortcut(activated) if self.projection else x
        return self.conv2(self.act2(self.norm2(self.conv1(activated)))) + shortcut


class GlobalAggregationBlock(nn.Module):
    """The paper's global aggregation block: multi-head scaled dot-product attention in which every
    output voxel attends to every input voxel, so one layer has a global receptive field. The query transform
    sets the output size: 1x1 conv ("same"), 3x3 stride-s conv ("down") or 3x3 stride-s transposed conv ("up");
    keys and values are 1x1 convs of the input; a 1x1 conv maps the heads' output to `out_channels`."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        key_channels: Optional[int] = None,
        value_channels: Optional[int] = None,
        num_heads: int = 1,
        mode: str = "same",
        scale_factor: Union[int, Sequence[int]] = 2,
        attention_dropout: float = 0.0,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            out_channels: output channels (the 1x1 output conv's).
            key_channels: total query/key depth over all heads; None = out_channels (reference code).
            value_channels: total value depth over all heads; None = out_channels (reference code).
            num_heads: attention heads; must divide key_channels and value_channels.
            mode: "same" keeps the size, "down" divides it by scale_factor, "up" multiplies it by scale_factor.
            scale_factor: per-axis factor of the "down"/"up" query conv (ignored for "same").
            attention_dropout: dropout on the attention weights (train mode only).
        """
        super().__init__()
        key_channels = out_channels if key_channels is None else int(key_channels)
        value_channels = out_channels if value_channels is None else int(value_channels)
        if num_heads < 1 or key_channels % num_heads or value_channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide key_channels={key_channels} and value_channels={value_channels}")
        conv = Conv[Conv.CONV, spatial_dims]
        factor = per_axis(scale_factor, spatial_dims)
        if mode == "same":
            self.query = conv(in_channels, key_channels, kernel_size=1, bias=True)
        elif mode == "down":
            self.query = conv(in_channels, key_channels, kernel_size=3, stride=factor, padding=1, bias=True)
        elif mode == "up":
            self.query = transposed_conv(spatial_dims, in_channels, key_channels, factor, bias=True)
        else:
            raise ValueError(f"mode must be 'same', 'down' or 'up', got {mode!r}")
        self.key = conv(in_channels, key_channels, kernel_size=1, bias=True)
        self.value = conv(in_channels, value_channels, kernel_size=1, bias=True)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.output = conv(value_channels, out_channels, kernel_size=1, bias=True)
        self.num_heads = int(num_heads)
        self.key_depth = key_channels // num_heads
        self.value_depth = value_channels // num_heads
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        q = self.query(x)
        out_size: List[int] = list(q.shape[2:])
        # heads take contiguous channel groups: (B, heads, depth, positions)
        q = q.reshape([batch, self.num_heads, self.key_depth, -1]) * (float(self.key_depth) ** -0.5)
        k = self.key(x).reshape([batch, self.num_heads, self.key_depth, -1])
        v = self.value(x).reshape([batch, self.num_heads, self.value_depth, -1])
        weights = torch.softmax(torch.matmul(q.transpose(2, 3), k), dim=-1)  # (B, heads, out positions, in positions)
        weights = self.attention_dropout(weights)
        heads = torch.matmul(v, weights.transpose(2, 3))  # (B, heads, value depth, out positions)
        return self.output(heads.reshape([batch, self.num_heads * self.value_depth] + out_size))


class BottomBlock(nn.Module):
    """The paper's bottom block: norm-ReLU6, then a size-preserving global aggregation block with a residual
    connection, so the encoder's output mixes information from the whole patch."""

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        num_heads: int = 2,
        key_channels: Optional[int] = None,
        value_channels: Optional[int] = None,
        attention_dropout: float = 0.0,
        norm: str = "instance",
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            channels: input and output channels.
            num_heads: attention heads (reference code: 2).
            key_channels: total query/key depth; None = channels.
            value_channels: total value depth; None = channels.
            attention_dropout: dropout on the attention weights.
            norm: "instance" or "batch".
        """
        super().__init__()
        self.norm = norm_layer(norm, spatial_dims, channels)
        self.act = nn.ReLU6()
        self.aggregation = GlobalAggregationBlock(
            spatial_dims, channels, channels, key_channels, value_channels, num_heads, "same", 1, attention_dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.act(self.norm(x))) + x


class UpSamplingAggregation(nn.Module):
    """The paper's up-sampling residual block: norm-ReLU6, then a stride-s transposed conv shortcut plus
    an up-sampling global aggregation block, so every up-sampled voxel draws on the whole coarser map."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: Union[int, Sequence[int]] = 2,
        num_heads: int = 1,
        key_channels: Optional[int] = None,
        value_channels: Optional[int] = None,
        attention_dropout: float = 0.0,
        norm: str = "instance",
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the coarser map.
            out_channels: channels of the up-sampled map.
            stride: per-axis up-sampling factor.
            num_heads: attention heads (reference code: 1).
            key_channels: total query/key depth; None = out_channels.
            value_channels: total value depth; None = out_channels.
            attention_dropout: dropout on the attention weights.
            norm: "instance" or "batch".
        """
        super().__init__()
        factor = per_axis(stride, spatial_dims)
        self.norm = norm_layer(norm, spatial_dims, in_channels)
        self.act = nn.ReLU6()
        self.shortcut = transposed_conv(spatial_dims, in_channels, out_channels, factor, bias=False)
        self.aggregation = GlobalAggregationBlock(
            spatial_dims, in_channels, out_channels, key_channels, value_channels, num_heads, "up", factor, attention_dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act(self.norm(x))
        return self.aggregation(activated) + self.shortcut(activated)


class UpSamplingBlock(nn.Module):
    """One decoder level: up-sample (plain transposed conv, or `UpSamplingAggregation`), add the encoder's skip
    (addition, not concatenation: no extra channels, and it acts as a long-range residual connection), then a
    pre-activation residual block."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: Union[int, Sequence[int]] = 2,
        attention: bool = False,
        num_heads: int = 1,
        key_channels: Optional[int] = None,
        value_channels: Optional[int] = None,
        attention_dropout: float = 0.0,
        norm: str = "instance",
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the coarser map.
            out_channels: channels of the skip and of the output.
            stride: per-axis up-sampling factor.
            attention: up-sample with `UpSamplingAggregation` instead of a transposed conv.
            num_heads: attention heads of the up-sampling aggregation.
            key_channels: its total query/key depth; None = out_channels.
            value_channels: its total value depth; None = out_channels.
            attention_dropout: dropout on its attention weights.
            norm: "instance" or "batch".
        """
        super().__init__()
        factor = per_axis(stride, spatial_dims)
        if attention:
            self.up: nn.Module = UpSamplingAggregation(
                spatial_dims, in_channels, out_channels, factor, num_heads, key_channels, value_channels,
                attention_dropout, norm,
            )
        else:  # the reference code up-samples the raw (not normalised) map here
            self.up = transposed_conv(spatial_dims, in_channels, out_channels, factor, bias=False)
        self.residual = PreActResidualBlock(spatial_dims, out_channels, out_channels, 1, norm, projection=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.residual(self.up(x) + skip)


class OutputBlock(nn.Module):
    """Norm-ReLU6, dropout, 1x1 conv to class logits (the reference code's output block)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dropout: float = 0.0, norm: str = "instance") -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: feature channels.
            out_channels: classes (logits).
            dropout: element-wise dropout before the 1x1 conv (reference code: 0.5).
            norm: "instance" or "batch".
        """
        super().__init__()
        self.norm = norm_layer(norm, spatial_dims, in_channels)
        self.act = nn.ReLU6()
        self.dropout = nn.Dropout(dropout)  # element-wise, as tf.layers.dropout (MONAI's factory gives channel dropout)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(self.act(self.norm(x))))


class NonLocalUNet(nn.Module):
    """Non-local U-Net (Wang et al., AAAI 2020): a shallow residual U-Net whose bottom block and deepest
    up-sampling are global aggregation (self-attention) blocks, giving a global receptive field with few
    parameters. Input conv -> one pre-activation residual block per level (strided from level 1 on) -> bottom
    aggregation block -> up-sampling blocks with additive skips -> output block. Returns logits (no softmax).

    The input's spatial size must be divisible, per axis, by the product of `strides`. Scriptable with
    `torch.jit.script`. See the module docstring for where this follows the reference code vs the paper.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128),
        strides: Optional[Sequence[Union[int, Sequence[int]]]] = None,
        num_heads: int = 2,
        up_num_heads: int = 1,
        key_channels: Optional[int] = None,
        value_channels: Optional[int] = None,
        attention_dropout: float = 0.5,
        attention_up_levels: int = 1,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: image channels (iSeg-2017 in the paper: 2, T1 and T2).
            out_channels: classes including the background (paper: 4).
            features: channels per level, input level first; the bottom block works at the last (reference: 32, 64, 128).
            strides: per level, nnU-Net style: strides[0] all ones, strides[i] the per-axis factor from level i-1 to i; default 2.
            num_heads: attention heads of the bottom block (reference code: 2).
            up_num_heads: attention heads of the up-sampling aggregation blocks (reference code: 1).
            key_channels: total query/key depth of every aggregation block; None = that block's output channels (reference).
            value_channels: total value depth of every aggregation block; None = that block's output channels (reference).
            attention_dropout: dropout on the attention weights, train mode only (reference code: 0.5).
            attention_up_levels: how many decoder levels, deepest first, up-sample by global aggregation (reference code 1, paper all).
            norm: "instance" (InstanceNorm, affine; project default) or "batch" (the paper's BatchNorm).
            dropout: element-wise dropout in the output block, before the final 1x1 conv (for MONAI Label's epistemic scoring).
        """
        super().__init__()
        levels = len(features)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if levels < 2:
            raise ValueError("features needs at least two levels (one down-sampling)")
        stride_lists = level_strides(strides, levels, spatial_dims)
        if not 0 <= attention_up_levels <= levels - 1:
            raise ValueError(f"attention_up_levels must be in [0, {levels - 1}], got {attention_up_levels}")
        features = [int(f) for f in features]
        self.spatial_dims = spatial_dims
        self.strides: List[List[int]] = stride_lists  # read by `cascade.stride_product`
        self.divisor: List[int] = total_stride(stride_lists)

        self.input_conv = Conv[Conv.CONV, spatial_dims](in_channels, features[0], kernel_size=3, padding=1, bias=False)
        self.encoder = nn.ModuleList(
            [
                PreActResidualBlock(
                    spatial_dims, features[max(i - 1, 0)], features[i], stride_lists[i], norm, projection=True
                )
                for i in range(levels)
            ]
        )
        self.bottom = BottomBlock(spatial_dims, features[-1], num_heads, key_channels, value_channels, attention_dropout, norm)
        self.decoder = nn.ModuleList(  # deepest level first
            [
                UpSamplingBlock(
                    spatial_dims, features[i + 1], features[i], stride_lists[i + 1],
                    attention=(levels - 2 - i) < attention_up_levels, num_heads=up_num_heads,
                    key_channels=key_channels, value_channels=value_channels,
                    attention_dropout=attention_dropout, norm=norm,
                )
                for i in range(levels - 2, -1, -1)
            ]
        )
        self.output_block = OutputBlock(spatial_dims, features[0], out_channels, dropout, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        if len(spatial) != self.spatial_dims:
            raise ValueError("input must be (B, C, *spatial) with spatial_dims spatial axes")
        require_divisible(x, self.divisor)
        x = self.input_conv(x)
        skips: List[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.bottom(x)
        for j, block in enumerate(self.decoder):
            x = block(x, skips[len(skips) - 2 - j])
        return self.output_block(x)
