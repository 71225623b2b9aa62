"""Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018).

Why this network: a small organ such as the pancreas is usually segmented by a cascade (localise, crop, segment).
Attention gates do the localisation inside one U-Net: the coarse, context-rich decoder features decide, on a grid,
which positions of each skip connection reach the decoder, so irrelevant regions are suppressed in the forward
pass and their gradients are down-weighted in the backward pass (`shared/reference/unet-family.md`, section 2).

The layout follows the authors' pancreas model (`unet_CT_multi_att_dsv_3D` in ozan-oktay/Attention-Gated-Networks):
max-pool encoder of [conv-norm-ReLU] x2 blocks, gating signal from the centre through a 1x1 conv, two grid
attention gates per gated skip whose outputs a 1x1 conv merges, linear upsampling, and optionally four
deep-supervision heads fused by a 1x1 conv. It is not MONAI's `AttentionUnet`, whose gate works at the skip's own
resolution, has one gate per level and no deep supervision.

Differences from the reference code, by design: strides are per level and per axis (nnU-Net plans, anisotropic
pooling); the coarse features are resized to the skip's exact size instead of upsampled by 2 and padded;
InstanceNorm (affine) is the default norm, BatchNorm the paper's option.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Dropout, Pool
from torch import nn

from custom_components.networks.layers import level_strides, norm_layer, per_axis, require_divisible, total_stride

__all__ = [
    "AttentionUNet",
    "ConvNormReLU",
    "ConvBlock",
    "Down",
    "GridAttentionGate",
    "AttentionSkip",
    "AttentionUpBlock",
    "DeepSupervisionHead",
]


def _interpolation_mode(spatial_dims: int) -> str:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return "bilinear" if spatial_dims == 2 else "trilinear"


class ConvNormReLU(nn.Sequential):
    """One conv (same padding, with bias as in the reference code) -> norm -> ReLU, then dropout when > 0."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 norm: str = "instance", dropout: float = 0.0) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            out_channels: output channels.
            kernel_size: isotropic kernel size; odd, padded to keep the spatial size.
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
            dropout: element-wise dropout probability after the ReLU; 0 adds no dropout layer.
        """
        layers: List[nn.Module] = [
            Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2),
            norm_layer(norm.lower(), spatial_dims, out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0.0:
            layers.append(Dropout[Dropout.DROPOUT, 1](dropout))
        super().__init__(*layers)


class ConvBlock(nn.Sequential):
    """The U-Net stage of the paper: two 3x3(x3) conv-norm-ReLU units (`UnetConv3` in the reference code)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str = "instance",
                 dropout: float = 0.0) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            out_channels: output channels of both convs.
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
            dropout: dropout probability after each of the two units (MC dropout); 0 adds none.
        """
        super().__init__(
            ConvNormReLU(spatial_dims, in_channels, out_channels, 3, norm, dropout),
            ConvNormReLU(spatial_dims, out_channels, out_channels, 3, norm, dropout),
        )


class Down(nn.Sequential):
    """Encoder level: max-pool by the level's per-axis stride (kernel = stride, as the paper's 2x2x2 pooling), then
    a `ConvBlock`. A stride of all ones pools nothing (the input level)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: Sequence[int],
                 norm: str = "instance", dropout: float = 0.0) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            out_channels: output channels.
            stride: per-axis downsampling factor from the finer level.
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
            dropout: dropout probability inside the `ConvBlock`.
        """
        factor = per_axis(stride, spatial_dims)
        pool: nn.Module = nn.Identity() if max(factor) == 1 else Pool[Pool.MAX, spatial_dims](kernel_size=factor, stride=factor)
        super().__init__(pool, ConvBlock(spatial_dims, in_channels, out_channels, norm, dropout))


class GridAttentionGate(nn.Module):
    """Additive grid attention gate (paper eq. 1-2, `GridAttentionBlock3D` "concatenation" mode).

    theta_x = strided conv of the skip x (kernel = stride = the pooling factor to the gating level, no bias), so
    the gate scores x on the gating signal's grid; phi_g = 1x1 conv of g, resized to theta_x; alpha = sigmoid(psi(
    ReLU(theta_x + phi_g))), resized linearly back to x; output = norm(conv1x1(alpha * x)). Scoring on the coarse
    grid keeps the gate cheap and lets the local context of g, not one global vector, pick the regions.
    """

    def __init__(self, spatial_dims: int, in_channels: int, gating_channels: int, inter_channels: Optional[int] = None,
                 sub_sample_factor: Union[int, Sequence[int]] = 2, norm: str = "instance") -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the skip features x (and of the output).
            gating_channels: channels of the gating signal g.
            inter_channels: channels of theta_x and phi_g; default `in_channels` (the pancreas model's choice).
            sub_sample_factor: per-axis kernel and stride of theta, the factor between x's and g's grids.
            norm: norm after the output 1x1 conv: "instance" (affine) or "batch" (the paper's).
        """
        super().__init__()
        inter = int(inter_channels) if inter_channels is not None else int(in_channels)
        factor = per_axis(sub_sample_factor, spatial_dims)
        conv = Conv[Conv.CONV, spatial_dims]
        self.mode = _interpolation_mode(spatial_dims)
        self.theta = conv(in_channels, inter, kernel_size=factor, stride=factor, bias=False)
        self.phi = conv(gating_channels, inter, kernel_size=1)
        self.psi = conv(inter, 1, kernel_size=1)
        self.output = nn.Sequential(conv(in_channels, in_channels, kernel_size=1), norm_layer(norm.lower(), spatial_dims, in_channels))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, in_channels, *S), g (B, gating_channels, *S') -> gated x (B, in_channels, *S), alpha (B, 1, *S) in [0, 1]."""
        theta_x = self.theta(x)
        phi_g = F.interpolate(self.phi(g), size=theta_x.shape[2:], mode=self.mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta_x + phi_g)))
        alpha = F.interpolate(alpha, size=x.shape[2:], mode=self.mode, align_corners=False)
        return self.output(alpha * x), alpha


class AttentionSkip(nn.Module):
    """A gated skip connection as in the pancreas model (`MultiAttentionBlock`): several grid attention gates on the
    same skip and gating signal, merged by a 1x1 conv-norm-ReLU. Two gates let the skip attend to more than one
    structure (the paper's multi-dimensional attention coefficients for multi-class segmentation)."""

    def __init__(self, spatial_dims: int, in_channels: int, gating_channels: int,
                 sub_sample_factor: Union[int, Sequence[int]] = 2, norm: str = "instance", num_gates: int = 2) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the skip features (and of the output).
            gating_channels: channels of the gating signal.
            sub_sample_factor: per-axis factor between the skip's grid and the gating signal's grid.
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
            num_gates: gates on the skip; 2 in the pancreas model.
        """
        super().__init__()
        if num_gates < 1:
            raise ValueError(f"num_gates must be >= 1, got {num_gates}")
        self.gates = nn.ModuleList(
            [GridAttentionGate(spatial_dims, in_channels, gating_channels, in_channels, sub_sample_factor, norm)
             for _ in range(num_gates)]
        )
        self.combine = ConvNormReLU(spatial_dims, num_gates * in_channels, in_channels, 1, norm)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, *S), g (B, G, *S') -> gated skip (B, C, *S), attention coefficients (B, num_gates, *S)."""
        gated: List[torch.Tensor] = []
        alphas: List[torch.Tensor] = []
        for gate in self.gates:
            out, alpha = gate(x, g)
            gated.append(out)
            alphas.append(alpha)
        return self.combine(torch.cat(gated, dim=1)), torch.cat(alphas, dim=1)


class AttentionUpBlock(nn.Module):
    """Decoder level (`UnetUp3_CT` plus its gate): gate the skip with the gating signal (when the level is gated),
    resize the coarser decoder features linearly to the skip's size, concatenate [skip, upsampled], `ConvBlock`."""

    def __init__(self, spatial_dims: int, skip_channels: int, coarse_channels: int, out_channels: int,
                 gating_channels: int = 0, sub_sample_factor: Union[int, Sequence[int]] = 2, norm: str = "instance",
                 dropout: float = 0.0) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            skip_channels: channels of the encoder features at this level.
            coarse_channels: channels of the coarser decoder features (upsampled and concatenated).
            out_channels: output channels.
            gating_channels: channels of the gating signal; 0 leaves the skip ungated (the input level).
            sub_sample_factor: per-axis factor between this level and the gating signal's level.
            norm: "instance" (affine InstanceNorm) or "batch" (BatchNorm).
            dropout: dropout probability inside the `ConvBlock`.
        """
        super().__init__()
        self.mode = _interpolation_mode(spatial_dims)
        self.attention: Optional[AttentionSkip] = None
        if gating_channels > 0:
            self.attention = AttentionSkip(spatial_dims, skip_channels, gating_channels, sub_sample_factor, norm)
        self.conv = ConvBlock(spatial_dims, skip_channels + coarse_channels, out_channels, norm, dropout)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor, gating: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """-> decoder features (B, out_channels, *skip spatial), attention coefficients (None when ungated)."""
        alpha: Optional[torch.Tensor] = None
        attention = self.attention
        if attention is not None:
            skip, alpha = attention(skip, gating)
        up = F.interpolate(coarse, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return self.conv(torch.cat([skip, up], dim=1)), alpha


class DeepSupervisionHead(nn.Module):
    """1x1 conv to class logits, resized linearly to the output size (`UnetDsv3`): each decoder level votes on the
    full-size segmentation, which the network's final 1x1 conv fuses."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        """
        Args:
            spatial_dims: 2 or 3.
            in_channels: channels of the decoder features.
            out_channels: classes.
        """
        super().__init__()
        self.mode = _interpolation_mode(spatial_dims)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, size: List[int]) -> torch.Tensor:
        logits = self.conv(x)
        if list(logits.shape[2:]) == size:
            return logits
        return F.interpolate(logits, size=size, mode=self.mode, align_corners=False)


class AttentionUNet(nn.Module):
    """Attention U-Net of Oktay et al. (MIDL 2018), the pancreas model of the reference code, on nnU-Net-style plans.

    Why: attention-gated skips let one network localise and segment a small, variable organ, where a plain U-Net
    needs a cascade. Levels: encoder `Down` blocks; the last level is the centre, whose features through a 1x1
    conv-norm-ReLU gate the deepest skip; each shallower gated skip is gated by the decoder output one level
    coarser. The input level's skip is not gated, as in the reference code.
    The forward always returns one tensor of logits (B, out_channels, *input spatial); `forward_with_attention`
    also returns the attention coefficients, deepest gated level first.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Optional[Sequence[Union[int, Sequence[int]]]] = None,
        norm: str = "instance",
        dropout: float = 0.0,
        deep_supervision: bool = False,
    ) -> None:
        """
        Args:
            spatial_dims: 2 or 3 spatial axes.
            in_channels: input channels (image modalities, plus previous-stage channels in a cascade).
            out_channels: output logits, one per class including the background (no softmax applied).
            features: channels per resolution level, input level first; the last is the centre (bottleneck).
            strides: per level, int or per-axis list (nnU-Net plans): [0] all ones, [i] pools level i-1 to i (default 2); gate i uses [i+1].
            norm: "instance" (InstanceNorm, affine; the project's default) or "batch" (BatchNorm; the paper's).
            dropout: after each conv-norm-ReLU of encoder, centre and decoder blocks (MONAI Label's MC-dropout epistemic scoring).
            deep_supervision: one head per decoder level, upsampled to the input size, fused by a 1x1 conv (pancreas model).
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        features = [int(f) for f in features]
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features needs at least two positive entries (one level and the centre), got {features}")
        levels = len(features)
        self.strides: List[List[int]] = level_strides(strides, levels, spatial_dims)
        self.divisor: List[int] = total_stride(self.strides)
        self.spatial_dims = spatial_dims
        self.deep_supervision = bool(deep_supervision)

        self.encoder = nn.ModuleList(
            [Down(spatial_dims, in_channels if i == 0 else features[i - 1], features[i], self.strides[i], norm, dropout)
             for i in range(levels)]
        )
        self.gating = ConvNormReLU(spatial_dims, features[-1], features[-1], 1, norm)
        # deepest level first; the skip of level i is gated on level i+1's grid, so theta's factor is strides[i+1]
        self.decoder = nn.ModuleList(
            [AttentionUpBlock(spatial_dims, features[i], features[i + 1], features[i],
                              gating_channels=features[i + 1] if i > 0 else 0, sub_sample_factor=self.strides[i + 1],
                              norm=norm, dropout=dropout)
             for i in range(levels - 2, -1, -1)]
        )
        conv = Conv[Conv.CONV, spatial_dims]
        if self.deep_supervision:
            self.heads = nn.ModuleList(
                [DeepSupervisionHead(spatial_dims, features[i], out_channels) for i in range(levels - 2, -1, -1)]
            )
            self.output = conv((levels - 1) * out_channels, out_channels, kernel_size=1)
        else:
            self.heads = nn.ModuleList()
            self.output = conv(features[0], out_channels, kernel_size=1)

        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                # the reference code's He initialisation, for the ReLU units
                nn.init.kaiming_normal_(module.weight, a=0.0, mode="fan_in")

    @torch.jit.export
    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """x (B, in_channels, *spatial) -> logits (B, out_channels, *spatial) and, per gated level from the deepest,
        its attention coefficients (B, 2, *level spatial) in [0, 1]."""
        spatial: List[int] = list(x.shape[2:])
        require_divisible(x, self.divisor)
        skips: List[torch.Tensor] = []
        h = x
        for level in self.encoder:
            h = level(h)
            skips.append(h)

        gating = self.gating(h)
        decoded: List[torch.Tensor] = []
        attention: List[torch.Tensor] = []
        for k, level in enumerate(self.decoder):
            h, alpha = level(skips[len(skips) - 2 - k], h, gating)
            gating = h
            decoded.append(h)
            if alpha is not None:
                attention.append(alpha)

        if not self.deep_supervision:
            return self.output(h), attention
        votes: List[torch.Tensor] = []
        for k, head in enumerate(self.heads):
            votes.insert(0, head(decoded[k], spatial))  # finest level first, as the reference concatenates
        return self.output(torch.cat(votes, dim=1)), attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, *spatial), spatial divisible by the per-axis stride product -> logits (B, out_channels, *spatial)."""
        return self.forward_with_attention(x)[0]
