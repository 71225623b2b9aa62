"""MultiResUNet (Ibtehaz & Rahman 2020): shapes, gradients, TorchScript, the paper's block widths and ResPath
lengths, norm and dropout options, and the paper configuration's parameter count against the reference code."""

import pytest
import torch
from torch import nn

from custom_components.networks.multires_unet import (
    ConvNorm,
    MultiResBlock,
    MultiResUNet,
    ResPath,
    multires_branch_widths,
)

SMALL = (8, 16, 32)  # reduced U per level where the test is not about the paper's configuration


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "spatial_dims, strides, shape",
    [
        (2, None, (16, 16)),
        (2, [1, [2, 1], 2], (16, 8)),
        (3, None, (8, 8, 8)),
        (3, [[1, 1, 1], [2, 2, 1], [2, 2, 2]], (16, 16, 4)),
    ],
)
def test_output_has_input_size_and_out_channels_for_isotropic_and_anisotropic_strides(spatial_dims, strides, shape):
    torch.manual_seed(0)
    net = MultiResUNet(spatial_dims, 2, 3, features=SMALL, strides=strides)
    out = net(torch.randn(2, 2, *shape))
    assert out.shape == (2, 3, *shape)


def test_anisotropic_stride_sets_pool_and_transposed_conv_kernels_per_axis():
    net = MultiResUNet(3, 1, 2, features=SMALL, strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2]])
    assert net.encoder[0].pool.kernel_size == (2, 2, 1) and net.encoder[0].pool.stride == (2, 2, 1)
    assert net.encoder[1].pool.kernel_size == (2, 2, 2)
    # decoder runs bottom-up: decoder[0] undoes the deepest stride, decoder[-1] the first
    assert net.decoder[0].up.kernel_size == (2, 2, 2) and net.decoder[0].up.stride == (2, 2, 2)
    assert net.decoder[-1].up.kernel_size == (2, 2, 1) and net.decoder[-1].up.stride == (2, 2, 1)
    assert net.divisor == [4, 4, 2]


def test_input_not_divisible_by_stride_product_is_rejected():
    net = MultiResUNet(3, 1, 2, features=SMALL, strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2]])
    with pytest.raises(ValueError, match="divide"):
        net(torch.randn(1, 1, 16, 16, 3))


def test_first_stride_must_be_all_ones():
    with pytest.raises(ValueError, match="all ones"):
        MultiResUNet(3, 1, 2, features=SMALL, strides=[[2, 2, 2], [2, 2, 1], [2, 2, 2]])


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_every_parameter_gets_a_finite_gradient(norm):
    torch.manual_seed(0)
    net = MultiResUNet(3, 1, 2, features=SMALL, strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2]], norm=norm, dropout=0.1)
    net.train()
    net(torch.randn(2, 1, 16, 16, 4)).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(
    "spatial_dims, strides, shape",
    [(2, None, (16, 16)), (3, [[1, 1, 1], [2, 2, 1], [2, 2, 2]], (16, 16, 4))],
)
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_scripted_network_matches_eager_in_eval_mode(spatial_dims, strides, shape, norm):
    torch.manual_seed(0)
    net = MultiResUNet(spatial_dims, 1, 3, features=SMALL, strides=strides, norm=norm, dropout=0.2).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        assert (scripted(x) - net(x)).abs().max().item() < 1e-5


def test_multires_block_branch_widths_follow_the_reference_rounding_and_sum_to_its_width():
    # W = 1.67 * 32 = 53.44: int(W * 0.167) = 8, int(W * 0.333) = 17, int(W * 0.5) = 26 (= int(W/6), int(W/3), int(W/2))
    block = MultiResBlock(2, 3, 32)
    assert block.branch_widths == [8, 17, 26] and block.out_channels == 51
    assert [block.conv3x3.conv.out_channels, block.conv5x5.conv.out_channels, block.conv7x7.conv.out_channels] == [8, 17, 26]
    assert block.shortcut.conv.out_channels == 51 and block.shortcut.conv.kernel_size == (1, 1)
    assert block(torch.randn(2, 3, 8, 8)).shape == (2, 51, 8, 8)
    # the reference truncates W * 0.333, not W / 3: for U = 512, W = 855.04, int(W * 0.333) = 284 but int(W / 3) = 285
    assert multires_branch_widths(512) == (142, 284, 427)
    assert [sum(multires_branch_widths(u)) for u in (32, 64, 128, 256, 512)] == [51, 105, 212, 426, 853]


def test_respath_lengths_shrink_from_four_at_the_top_to_one_above_the_bottleneck():
    net = MultiResUNet(2, 3, 1, features=(4, 8, 16, 32, 64))
    assert [level.respath.length for level in net.encoder] == [4, 3, 2, 1]
    assert [len(level.respath.units) for level in net.encoder] == [4, 3, 2, 1]
    path = ResPath(2, 51, 32, length=4)
    assert path(torch.randn(2, 51, 8, 8)).shape == (2, 32, 8, 8)  # the skip carries U channels, as in the reference


def test_norm_option_selects_batchnorm_or_affine_instancenorm():
    batch = MultiResUNet(2, 1, 2, features=SMALL, norm="batch")
    instance = MultiResUNet(3, 1, 2, features=SMALL, norm="instance")
    batch_norms = [m for m in batch.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batch_norms and not any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in batch.modules())
    instance_norms = [m for m in instance.modules() if isinstance(m, nn.modules.instancenorm._InstanceNorm)]
    assert instance_norms and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in instance.modules())
    assert all(isinstance(m, nn.InstanceNorm3d) and m.affine and m.weight is not None for m in instance_norms)
    with pytest.raises(ValueError, match="norm"):
        MultiResUNet(2, 1, 2, features=SMALL, norm="group")


def test_dropout_is_active_in_train_mode_and_inactive_in_eval_mode():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16, 4)
    strides = [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in MultiResUNet(3, 1, 2, features=SMALL).modules())
    net = MultiResUNet(3, 1, 2, features=SMALL, strides=strides, dropout=0.5)
    # one after each MultiRes block: 2 encoder levels + bottleneck + 2 decoder levels
    assert sum(isinstance(m, nn.modules.dropout._DropoutNd) for m in net.modules()) == 5
    with torch.no_grad():
        net.train()  # InstanceNorm has no running statistics, so only dropout makes two passes differ
        assert not torch.allclose(net(x), net(x))
        net.eval()
        assert torch.equal(net(x), net(x))


def _keras_reference_parameter_count() -> int:
    """Parameters the authors' Keras `MultiResUnet(128, 128, 3)` (tensorflow/MultiResUNet.py) reports in
    `model.summary()`, worked out from its layer shapes (2D, 3 input channels, U = 32..512, alpha = 1.67).

    Keras counts: conv2d_bn = conv without bias + BatchNorm(scale=False), i.e. beta + moving mean + moving variance
    = 3 per channel; a plain BatchNormalization = gamma, beta, moving mean, moving variance = 4 per channel;
    Conv2DTranspose has a bias.

    MultiRes block, input c, branches (a, b, d), width w = a + b + d:
        shortcut c*w + 3w, 3x3 branches 9*c*a + 3a, 9*a*b + 3b, 9*b*d + 3d, two BatchNorms 4w + 4w
        = c*(w + 9a) + 9*(a*b + b*d) + 14w
    ResPath unit, input c, output f: 1x1 c*f + 3f, 3x3 9*c*f + 3f, BatchNorm 4f = 10*c*f + 10f
    Transposed conv 2x2, input c, output U: 4*c*U + U.   Head conv2d_bn(1x1, 1 filter) + sigmoid: 51 + 3 = 54.

    Encoder blocks (U: branches a, b, d; width w; input c):
        U=32  (8, 17, 26)     w=51,  c=3:   3*123 + 9*(136 + 442) + 714           =     6,285
        U=64  (17, 35, 53)    w=105, c=51:  51*258 + 9*(595 + 1,855) + 1,470       =    36,678
        U=128 (35, 71, 106)   w=212, c=105: 105*527 + 9*(2,485 + 7,526) + 2,968    =   148,402
        U=256 (71, 142, 213)  w=426, c=212: 212*1,065 + 9*(10,082 + 30,246) + 5,964 =  594,696
        U=512 (142, 284, 427) w=853, c=426: 426*2,131 + 9*(40,328 + 121,268) + 11,942 = 2,374,112 (bottleneck)
                                                                           sum 3,160,173
    ResPaths (width f = U, first unit from the block's width w):
        U=32,  4 units: (10*51*32 + 320) + 3*(10*32*32 + 320)        =    48,320
        U=64,  3 units: (10*105*64 + 640) + 2*(10*64*64 + 640)       =   151,040
        U=128, 2 units: (10*212*128 + 1,280) + (10*128*128 + 1,280)  =   437,760
        U=256, 1 unit:  10*426*256 + 2,560                           = 1,093,120
                                                                 sum 1,730,240
    Up convs: 4*853*256 + 256 = 873,728; 4*426*128 + 128 = 218,240; 4*212*64 + 64 = 54,336;
              4*105*32 + 32 = 13,472                                                   sum 1,159,776
    Decoder blocks (input 2U):
        U=256, c=512: 512*1,065 + 9*(10,082 + 30,246) + 5,964 = 914,196
        U=128, c=256: 256*527 + 9*(2,485 + 7,526) + 2,968     = 227,979
        U=64,  c=128: 128*258 + 9*(595 + 1,855) + 1,470       =  56,544
        U=32,  c=64:  64*123 + 9*(136 + 442) + 714            =  13,788
                                                          sum 1,212,507
    Total = 3,160,173 + 1,730,240 + 1,159,776 + 1,212,507 + 54 = 7,262,750.
    """
    def block(c: int, u: int) -> int:
        a, b, d = multires_branch_widths(u)
        w = a + b + d
        return c * (w + 9 * a) + 9 * (a * b + b * d) + 14 * w

    def respath(c: int, f: int, length: int) -> int:
        return (10 * c * f + 10 * f) + (length - 1) * (10 * f * f + 10 * f)

    encoder = block(3, 32) + block(51, 64) + block(105, 128) + block(212, 256) + block(426, 512)
    respaths = respath(51, 32, 4) + respath(105, 64, 3) + respath(212, 128, 2) + respath(426, 256, 1)
    ups = (4 * 853 * 256 + 256) + (4 * 426 * 128 + 128) + (4 * 212 * 64 + 64) + (4 * 105 * 32 + 32)
    decoder = block(512, 256) + block(256, 128) + block(128, 64) + block(64, 32)
    head = 51 * 1 + 3
    assert (encoder, respaths, ups, decoder) == (3_160_173, 1_730_240, 1_159_776, 1_212_507)
    return encoder + respaths + ups + decoder + head


def test_paper_configuration_parameter_count_matches_the_reference_keras_model():
    """The paper chose alpha = 1.67 to keep MultiResUNet's parameters just under U-Net's (quoted as about 7.26M vs
    7.76M for 2D). The paper's exact figure could not be retrieved through the available sources (only that rounded
    quote), so the reference is the exact count of the authors' Keras model, worked out from its layer shapes
    (`_keras_reference_parameter_count`: 7,262,750, which rounds to 7.26M). Our PyTorch count differs from it only
    by bookkeeping, each term taken from the model:
      + BatchNorm running mean/var: parameters in Keras' count, buffers in PyTorch (2 per norm channel);
      - gamma of each conv-norm: PyTorch BatchNorm always has gamma, Keras conv2d_bn uses scale=False (1 per channel);
      - the head: ours is a biased 1x1 conv for logits (51 + 1), the reference conv2d_bn + sigmoid (51 + 3).
    After that conversion the counts must agree exactly (tolerance 0)."""
    net = MultiResUNet(2, 3, 1, norm="batch")  # paper defaults: U = 32..512, alpha = 1.67, stride 2
    ours = sum(p.numel() for p in net.parameters())
    running_stats = sum(b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
    conv_norm_gammas = sum(m.norm.weight.numel() for m in net.modules() if isinstance(m, ConvNorm))
    head_ours, head_keras = net.head.weight.numel() + net.head.bias.numel(), 51 + 3

    keras = _keras_reference_parameter_count()
    assert keras == 7_262_750
    assert round(keras / 1e6, 2) == 7.26  # the figure quoted for the paper
    assert ours + running_stats - conv_norm_gammas - head_ours + head_keras == keras
    # the bookkeeping terms, by hand: norm channels 12,260 (24,520 running stats), conv-norm channels 6,546
    assert (running_stats, conv_norm_gammas, head_ours) == (24_520, 6_546, 52)
    assert ours == 7_244_774
