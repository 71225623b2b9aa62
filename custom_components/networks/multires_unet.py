"""MultiResUNet (Ibtehaz & Rahman, "MultiResUNet: Rethinking the U-Net architecture for multimodal biomedical image
segmentation", Neural Networks 121, 2020; `shared/reference/unet-family.md`, "MultiResUNet").

Two changes to U-Net, each a block here: the MultiRes block replaces U-Net's pair of 3x3 convs, because chained 3x3
convs concatenated see 3x3, 5x5 and 7x7 context at once (objects of many scales, cheaper than parallel 5x5 and 7x7);
the ResPath puts residual convs on each skip, more where the encoder is shallowest, to narrow the semantic gap
between encoder and decoder features before they are concatenated.

Follows the authors' Keras code (nibtehaz/MultiResUNet, `tensorflow/MultiResUNet.py`): branch widths rounded as it
rounds them, ResPath width U (not the MultiRes block's width), ReLU before the last norm of each residual sum, convs
before a norm without bias, biased transposed convs (their later PyTorch port differs in ResPath width, ReLU/norm
order and conv biases).
Differences by design: `features`, `strides` (anisotropic) and `norm` are configurable, 2D and 3D come from one
class, and the head is a plain biased 1x1 conv giving logits (the reference ends in conv-BN-sigmoid).
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
from monai.networks.layers.factories import Conv, Dropout, Pool
from torch import nn

from custom_components.networks.layers import NORMS, level_strides, norm_layer, require_divisible, total_stride

def multires_branch_widths(features: int, alpha: float = 1.67) -> Tuple[int, int, int]:
    """Filters of the 3x3, "5x5" and "7x7" branches for U = `features`: W = alpha * U split about 1:2:3, truncated
    as the reference code does (int(W * 0.167), int(W * 0.333), int(W * 0.5); for U = 512 this gives 284, not
    int(W / 3) = 285)."""
    width = alpha * features
    return int(width * 0.167), int(width * 0.333), int(width * 0.5)


class ConvNorm(nn.Module):
    """Conv (no bias: the norm's shift replaces it) -> norm -> optional ReLU, the reference's `conv2d_bn`."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, norm: str = "instance",
        relu: bool = True,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            out_channels: output channels.
            kernel_size: odd kernel size on every axis; padding keeps the spatial size.
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
            relu: whether a ReLU follows the norm.
        """
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](
            in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2, bias=False
        )
        self.norm = norm_layer(norm, spatial_dims, out_channels)
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class MultiResBlock(nn.Module):
    """The paper's MultiRes block (Fig. 3c): three chained 3x3 conv-norm-ReLU whose outputs, concatenated, have
    seen 3x3, 5x5 and 7x7 context; normed, added to a 1x1 conv-norm projection of the input, ReLU, norm."""

    def __init__(
        self, spatial_dims: int, in_channels: int, features: int, alpha: float = 1.67, norm: str = "instance"
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            features: U, the filters of the U-Net level this block replaces.
            alpha: W = alpha * U sets the total width (1.67 keeps the parameter count just under U-Net's).
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
        """
        super().__init__()
        small, medium, large = multires_branch_widths(features, alpha)
        if small < 1:
            raise ValueError(f"features={features} with alpha={alpha} leaves the 3x3 branch without filters")
        self.branch_widths: List[int] = [small, medium, large]
        self.out_channels = small + medium + large
        self.shortcut = ConvNorm(spatial_dims, in_channels, self.out_channels, 1, norm, relu=False)
        self.conv3x3 = ConvNorm(spatial_dims, in_channels, small, 3, norm)
        self.conv5x5 = ConvNorm(spatial_dims, small, medium, 3, norm)
        self.conv7x7 = ConvNorm(spatial_dims, medium, large, 3, norm)
        self.concat_norm = norm_layer(norm, spatial_dims, self.out_channels)
        self.act = nn.ReLU()
        self.out_norm = norm_layer(norm, spatial_dims, self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv3x3(x)
        b = self.conv5x5(a)
        c = self.conv7x7(b)
        multires = self.concat_norm(torch.cat([a, b, c], dim=1))
        return self.out_norm(self.act(multires + self.shortcut(x)))


class ResPathUnit(nn.Module):
    """One step of a ResPath (Fig. 4): 3x3 conv-norm-ReLU plus a 1x1 conv-norm shortcut, ReLU, norm."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str = "instance") -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            out_channels: output channels.
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
        """
        super().__init__()
        self.conv = ConvNorm(spatial_dims, in_channels, out_channels, 3, norm)
        self.shortcut = ConvNorm(spatial_dims, in_channels, out_channels, 1, norm, relu=False)
        self.act = nn.ReLU()
        self.norm = norm_layer(norm, spatial_dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.conv(x) + self.shortcut(x)))


class ResPath(nn.Module):
    """The paper's skip connection: a chain of `length` residual units, longer at shallower levels, because early
    encoder features are the furthest (in processing) from the decoder features they are concatenated with."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, length: int, norm: str = "instance"
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the encoder's MultiRes block output.
            out_channels: channels passed to the decoder (the reference uses U of the level).
            length: number of residual units (>= 1).
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
        """
        super().__init__()
        if length < 1:
            raise ValueError(f"a ResPath needs length >= 1, got {length}")
        self.length = int(length)
        self.units = nn.Sequential(
            *[ResPathUnit(spatial_dims, in_channels if i == 0 else out_channels, out_channels, norm) for i in range(length)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x)


class EncoderLevel(nn.Module):
    """One encoder level: MultiRes block (+ dropout), its ResPath skip, max-pool (kernel = stride) to the next level."""

    def __init__(
        self, spatial_dims: int, in_channels: int, features: int, respath_length: int, down_stride: Sequence[int],
        alpha: float = 1.67, norm: str = "instance", dropout: float = 0.0,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            features: U of this level (also the ResPath's width).
            respath_length: residual units on this level's skip.
            down_stride: per-axis downsampling factor to the next level (pool kernel = stride).
            alpha: MultiRes width factor.
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
            dropout: channel-dropout probability after the MultiRes block (0 = none).
        """
        super().__init__()
        self.block = MultiResBlock(spatial_dims, in_channels, features, alpha, norm)
        self.out_channels = self.block.out_channels
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()
        self.respath = ResPath(spatial_dims, self.out_channels, features, respath_length, norm)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=tuple(down_stride), stride=tuple(down_stride))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (input of the next level, skip for the decoder)."""
        features = self.dropout(self.block(x))
        return self.pool(features), self.respath(features)


class DecoderLevel(nn.Module):
    """One decoder level: transposed conv up (kernel = stride), concatenated with the skip, MultiRes block (+ dropout)."""

    def __init__(
        self, spatial_dims: int, in_channels: int, features: int, up_stride: Sequence[int], alpha: float = 1.67,
        norm: str = "instance", dropout: float = 0.0,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels coming from the coarser level.
            features: U of this level: the upsampled channels, the skip's channels, and the MultiRes block's U.
            up_stride: per-axis upsampling factor from the coarser level (transposed-conv kernel = stride).
            alpha: MultiRes width factor.
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
            dropout: channel-dropout probability after the MultiRes block (0 = none).
        """
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, spatial_dims](
            in_channels, features, kernel_size=tuple(up_stride), stride=tuple(up_stride)
        )
        self.block = MultiResBlock(spatial_dims, 2 * features, features, alpha, norm)
        self.out_channels = self.block.out_channels
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.block(torch.cat([self.up(x), skip], dim=1)))


class MultiResUNet(nn.Module):
    """MultiResUNet (Ibtehaz & Rahman 2020): U-Net with MultiRes blocks instead of conv pairs and ResPaths instead of
    plain skips, which the paper reports beats U-Net with fewer parameters, most on hard, multimodal images.

    With L = len(features) levels, the skip of level i (0 = top) has a ResPath of length L - 1 - i (4, 3, 2, 1 for
    the paper's five). Input spatial size must divide by the per-axis product of `strides`; the output has the
    input's spatial size and `out_channels` logits. TorchScript-scriptable.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        alpha: float = 1.67,
        strides: Optional[Sequence[Union[int, Sequence[int]]]] = None,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input image channels.
            out_channels: output logit channels (no sigmoid/softmax is applied).
            features: U per level, top to bottom, the last the bottleneck (paper: 32..512; scale down for small budgets).
            alpha: W = alpha * U, the MultiRes block's width factor (paper: 1.67).
            strides: per level, nnU-Net style: strides[0] all ones, strides[i] the per-axis downsampling from level i-1 to i (default 2).
            norm: "instance" (InstanceNorm, affine; the project's 3D default) or "batch" (BatchNorm, the paper's).
            dropout: channel-dropout probability applied to every MultiRes block's output (encoder, bottleneck, decoder), e.g. for MONAI Label's epistemic (MC-dropout) scoring.
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(features) < 2:
            raise ValueError(f"features needs at least two levels (one plus the bottleneck), got {list(features)}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        levels = len(features)
        self.spatial_dims = spatial_dims
        self.features: List[int] = [int(f) for f in features]
        self.strides: List[List[int]] = level_strides(strides, levels, spatial_dims)
        self.divisor: List[int] = total_stride(self.strides)

        encoder: List[nn.Module] = []
        channels = in_channels
        for i in range(levels - 1):
            level = EncoderLevel(spatial_dims, channels, self.features[i], levels - 1 - i, self.strides[i + 1],
                                 alpha, norm, dropout)
            encoder.append(level)
            channels = level.out_channels
        self.encoder = nn.ModuleList(encoder)
        self.bottleneck = MultiResBlock(spatial_dims, channels, self.features[-1], alpha, norm)
        self.bottleneck_dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()
        channels = self.bottleneck.out_channels

        decoder: List[nn.Module] = []
        for i in reversed(range(levels - 1)):
            level = DecoderLevel(spatial_dims, channels, self.features[i], self.strides[i + 1], alpha, norm, dropout)
            decoder.append(level)
            channels = level.out_channels
        self.decoder = nn.ModuleList(decoder)
        self.head = Conv[Conv.CONV, spatial_dims](channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *spatial) -> (B, out_channels, *spatial) logits."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError("input must be (B, C, *spatial) with " + str(self.spatial_dims) + " spatial axes")
        require_divisible(x, self.divisor)
        skips: List[torch.Tensor] = []
        for level in self.encoder:
            x, skip = level(x)
            skips.append(skip)
        x = self.bottleneck_dropout(self.bottleneck(x))
        for i, level in enumerate(self.decoder):
            x = level(x, skips[len(skips) - 1 - i])
        return self.head(x)
