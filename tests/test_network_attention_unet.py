"""Attention U-Net (Oktay et al. 2018) and its blocks: shapes on nnU-Net-style strides, the grid attention gate,
TorchScript, norm and dropout options, and the pancreas model's parameter count against the paper's."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from custom_components.networks.attention_unet import (
    AttentionSkip,
    AttentionUNet,
    AttentionUpBlock,
    ConvBlock,
    DeepSupervisionHead,
    Down,
    GridAttentionGate,
)
from custom_components.networks.cascade import stride_product

SMALL = (4, 8, 16, 32)  # four levels keep every test at a few hundred milliseconds
ANISO_3D = [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]


pytestmark = pytest.mark.usefixtures("one_torch_thread", "torch_seed")


CASES = {
    "2d_isotropic": dict(spatial_dims=2, strides=None, shape=(16, 16)),
    "2d_anisotropic": dict(spatial_dims=2, strides=[[1, 1], [2, 1], [2, 2], [2, 2]], shape=(16, 8)),
    "3d_isotropic": dict(spatial_dims=3, strides=None, shape=(16, 16, 16)),
    "3d_anisotropic": dict(spatial_dims=3, strides=ANISO_3D, shape=(32, 32, 8)),
}


def _net(case: str, deep_supervision: bool = False, **kwargs) -> AttentionUNet:
    c = CASES[case]
    return AttentionUNet(c["spatial_dims"], 2, 3, features=SMALL, strides=c["strides"],
                         deep_supervision=deep_supervision, **kwargs)


def _input(case: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 2, *CASES[case]["shape"])


# ---- the whole network -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_have_the_input_size_and_one_channel_per_class(case, deep_supervision):
    out = _net(case, deep_supervision)(_input(case))
    assert out.shape == (2, 3, *CASES[case]["shape"])


def test_default_network_is_the_pancreas_layout_with_stride_two_everywhere():
    net = AttentionUNet(3, 1, 2).eval()
    assert net.strides == [[1, 1, 1]] + [[2, 2, 2]] * 4
    assert stride_product(net, 3) == [16, 16, 16]  # what the cascade and sliding window pad to
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_anisotropic_strides_set_pool_kernels_and_gate_factors_per_axis():
    net = AttentionUNet(3, 1, 2, features=SMALL, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 1], [2, 2, 2]])
    pools = [level[0] for level in net.encoder]
    assert isinstance(pools[0], nn.Identity)
    assert [tuple(p.kernel_size) for p in pools[1:]] == [(2, 2, 2), (2, 2, 1), (2, 2, 2)]
    # decoder runs deepest first: level 2's skip is gated on level 3's grid (strides[3]), level 1's on level 2's
    # (strides[2]), so theta_x lands exactly on the gating signal's grid
    thetas = [level.attention.gates[0].theta for level in net.decoder if level.attention is not None]
    assert [(tuple(t.kernel_size), tuple(t.stride)) for t in thetas] == [((2, 2, 2), (2, 2, 2)), ((2, 2, 1), (2, 2, 1))]
    assert stride_product(net, 3) == [8, 8, 4]
    assert stride_product(_net("3d_anisotropic"), 3) == [8, 8, 4]


def test_input_not_divisible_by_the_stride_product_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        _net("3d_anisotropic")(torch.randn(1, 2, 32, 32, 6))


@pytest.mark.parametrize("strides", [[[2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], [[1, 1, 1], [2, 2], [2, 2, 2], [2, 2, 2]],
                                     [[1, 1, 1], [2, 2, 2], [2, 2, 2]]])
def test_malformed_strides_are_rejected(strides):
    with pytest.raises(ValueError):
        AttentionUNet(3, 1, 2, features=SMALL, strides=strides)


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_every_parameter_gets_a_finite_gradient(norm, deep_supervision):
    net = _net("3d_anisotropic", deep_supervision, norm=norm, dropout=0.1)
    net(_input("3d_anisotropic")).logsumexp(dim=1).mean().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("case", ["2d_isotropic", "3d_anisotropic"])
def test_scripted_network_matches_eager_in_eval_mode(case, deep_supervision):
    net = _net(case, deep_supervision, norm="batch", dropout=0.2).eval()
    x = _input(case)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert (scripted(x) - net(x)).abs().max().item() < 1e-5
        eager_alpha = net.forward_with_attention(x)[1]
        scripted_alpha = scripted.forward_with_attention(x)[1]
    assert len(scripted_alpha) == len(eager_alpha) == len(SMALL) - 2
    for a, b in zip(scripted_alpha, eager_alpha):
        assert (a - b).abs().max().item() < 1e-5


def test_attention_maps_of_the_network_have_each_gated_skip_size():
    net = _net("3d_anisotropic")
    with torch.no_grad():
        _, alphas = net.forward_with_attention(_input("3d_anisotropic"))
    # gated levels, deepest first: level 2 (8x8x4) and level 1 (16x16x8); the input level is not gated
    assert [tuple(a.shape) for a in alphas] == [(2, 2, 8, 8, 4), (2, 2, 16, 16, 8)]
    for a in alphas:
        assert a.min() >= 0.0 and a.max() <= 1.0


def test_norm_batch_gives_batchnorm_and_instance_gives_affine_instancenorm():
    batch = _net("3d_isotropic", True, norm="batch")
    assert any(isinstance(m, nn.BatchNorm3d) for m in batch.modules())
    assert not any(isinstance(m, nn.InstanceNorm3d) for m in batch.modules())

    instance = _net("3d_isotropic", True, norm="instance")
    norms = [m for m in instance.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and not any(isinstance(m, nn.BatchNorm3d) for m in instance.modules())
    assert all(m.affine and m.weight is not None and m.bias is not None for m in norms)
    # affine InstanceNorm has as many parameters as BatchNorm, so the two variants count the same
    assert sum(p.numel() for p in instance.parameters()) == sum(p.numel() for p in batch.parameters())

    with pytest.raises(ValueError, match="norm"):
        _net("3d_isotropic", norm="group")


def test_dropout_adds_layers_that_act_in_train_mode_only():
    assert not any(isinstance(m, nn.Dropout) for m in _net("2d_isotropic").modules())

    net = _net("2d_isotropic", dropout=0.5)
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    # two conv units per ConvBlock: 4 encoder levels + 3 decoder levels
    assert len(drops) == 2 * (len(SMALL) + len(SMALL) - 1)
    x = _input("2d_isotropic")
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x), net(x))
        net.eval()
        assert torch.equal(net(x), net(x))


def test_pancreas_model_parameter_count_matches_the_paper():
    """Oktay et al. 2018, Table 1 (CT-150): Attention U-Net 6.40M parameters, U-Net 5.88M. The paper's network is
    the reference code's `unet_CT_multi_att_dsv_3D` (feature_scale 4: filters 16-256, BatchNorm, two gates per
    skip, deep supervision); one CT input channel; two classes (pancreas,
    background); CT-150's four classes would add 538 parameters (< 0.01%)."""
    net = AttentionUNet(3, 1, 2, features=(16, 32, 64, 128, 256), norm="batch", deep_supervision=True)
    count = sum(p.numel() for p in net.parameters())

    # By hand. ConvBlock(i -> o): two 3x3x3 convs with bias + two BN(2 per channel) = 27*o*(i + o) + 6*o.
    #   encoder  (1,16) 7440 + (16,32) 41664 + (32,64) 166272 + (64,128) 664320 + (128,256) 2655744 = 3535440
    #   decoder  (48,16) 27744 + (96,32) 110784 + (192,64) 442752 + (384,128) 1770240             = 2351520
    # gating 1x1 conv + BN on the centre: 256*256 + 256 + 512                                       =   66304
    # grid gate (C skip channels, G gating, inter C, 2x2x2 theta without bias):
    #   theta 8C^2 + phi (GC + C) + psi (C + 1) + output conv (C^2 + C) + BN 2C = 9C^2 + GC + 5C + 1
    # gated skip = 2 gates + combine 1x1 conv-BN (2C*C + C + 2C) = 20C^2 + 2GC + 13C + 2
    #   (C,G) = (32,64) 24994 + (64,128) 99138 + (128,256) 394882                                  =  519014
    # deep supervision: heads (16+32+64+128)*2 + 4*2 = 488, fusing 1x1 conv 8*2 + 2 = 18           =     506
    # total 3535440 + 2351520 + 66304 + 519014 + 506                                               = 6472784
    assert count == 6_472_784

    # The same arithmetic without the gates and the gating conv gives 5,887,466: the paper's U-Net 5.88M, so the
    # counting convention is the same. Ours is 1.1% above the paper's 6.40M: that gap is the gating 1x1 conv-BN
    # (66,304; without it 6,406,480 = 6.41M), which the paper's count most likely leaves out while its code has it.
    published = 6.40e6
    assert abs(count - published) / published < 0.02
    assert count - 66_304 - 519_014 == 5_887_466


# ---- the blocks on their own -------------------------------------------------------------------------------------


def test_conv_block_keeps_the_spatial_size():
    block = ConvBlock(3, 2, 5)
    assert block(torch.randn(1, 2, 6, 5, 4)).shape == (1, 5, 6, 5, 4)


def test_down_pools_by_its_per_axis_stride():
    assert Down(3, 2, 4, [2, 2, 1])(torch.randn(1, 2, 8, 8, 3)).shape == (1, 4, 4, 4, 3)
    assert Down(2, 2, 4, [1, 1])(torch.randn(1, 2, 5, 7)).shape == (1, 4, 5, 7)


@pytest.mark.parametrize("spatial_dims,factor,x_size,g_size", [
    (2, 2, (12, 8), (6, 4)),
    (3, [2, 2, 1], (8, 8, 3), (4, 4, 3)),
    (3, 2, (8, 8, 8), (2, 2, 2)),  # g coarser than theta_x: phi_g is resampled to theta_x's grid
])
def test_gate_coefficients_have_the_skip_size_and_lie_in_unit_interval(spatial_dims, factor, x_size, g_size):
    gate = GridAttentionGate(spatial_dims, 4, 6, sub_sample_factor=factor)
    x = torch.randn(2, 4, *x_size)
    out, alpha = gate(x, torch.randn(2, 6, *g_size))
    assert out.shape == x.shape
    assert alpha.shape == (2, 1, *x_size)
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0


def test_gate_follows_the_additive_grid_attention_formula():
    gate = GridAttentionGate(3, 3, 5, inter_channels=4, sub_sample_factor=[2, 2, 1], norm="batch").eval()
    x, g = torch.randn(1, 3, 6, 4, 2), torch.randn(1, 5, 2, 2, 1)
    out, alpha = gate(x, g)

    theta_x = F.conv3d(x, gate.theta.weight, stride=(2, 2, 1))  # (1, 4, 3, 2, 2)
    phi_g = F.interpolate(F.conv3d(g, gate.phi.weight, gate.phi.bias), size=(3, 2, 2), mode="trilinear")
    expected_alpha = F.interpolate(torch.sigmoid(F.conv3d(F.relu(theta_x + phi_g), gate.psi.weight, gate.psi.bias)),
                                   size=(6, 4, 2), mode="trilinear")
    assert torch.allclose(alpha, expected_alpha, atol=1e-6)
    assert torch.allclose(out, gate.output(expected_alpha * x), atol=1e-6)


def test_gate_with_zero_psi_passes_half_of_every_feature():
    gate = GridAttentionGate(2, 3, 3)
    with torch.no_grad():
        gate.psi.weight.zero_()
        gate.psi.bias.zero_()
    x = torch.randn(1, 3, 4, 4)
    out, alpha = gate(x, torch.randn(1, 3, 2, 2))
    assert torch.equal(alpha, torch.full_like(alpha, 0.5))
    assert torch.allclose(out, gate.output(0.5 * x))


def test_gated_skip_merges_two_gates_and_returns_both_coefficient_maps():
    skip = AttentionSkip(3, 4, 8, sub_sample_factor=[2, 2, 1])
    x = torch.randn(2, 4, 8, 8, 2)
    out, alpha = skip(x, torch.randn(2, 8, 4, 4, 2))
    assert len(skip.gates) == 2
    assert out.shape == x.shape and alpha.shape == (2, 2, 8, 8, 2)


def test_up_block_resizes_the_coarse_features_to_the_skip_and_gates_only_when_asked():
    ungated = AttentionUpBlock(3, 4, 8, 4)
    out, alpha = ungated(torch.randn(1, 4, 8, 8, 2), torch.randn(1, 8, 4, 4, 2), torch.randn(1, 8, 4, 4, 2))
    assert ungated.attention is None and alpha is None and out.shape == (1, 4, 8, 8, 2)

    gated = AttentionUpBlock(3, 4, 8, 4, gating_channels=8, sub_sample_factor=[2, 2, 1])
    out, alpha = gated(torch.randn(1, 4, 8, 8, 2), torch.randn(1, 8, 4, 4, 2), torch.randn(1, 8, 4, 4, 2))
    assert out.shape == (1, 4, 8, 8, 2) and alpha.shape == (1, 2, 8, 8, 2)


def test_deep_supervision_head_upsamples_class_logits_to_the_output_size():
    head = DeepSupervisionHead(3, 8, 3)
    assert head(torch.randn(1, 8, 4, 4, 2), [16, 16, 4]).shape == (1, 3, 16, 16, 4)
    x = torch.randn(1, 8, 4, 4, 2)
    assert torch.equal(head(x, [4, 4, 2]), head.conv(x))  # already full size: no resampling
