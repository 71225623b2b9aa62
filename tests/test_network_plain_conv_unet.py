"""nnU-Net's plain conv U-Net (DynUNet with nnU-Net's decoder kernels)."""

import torch
from monai.networks.nets import DynUNet

from custom_components.networks import PlainConvUNet

# the demo data's 3d_fullres plan: in-plane kernels at the two highest levels, isotropic below
KERNELS = [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]
STRIDES = [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]


def _net(cls=PlainConvUNet, **kw) -> torch.nn.Module:
    return cls(spatial_dims=3, in_channels=1, out_channels=3, kernel_size=KERNELS, strides=STRIDES,
               upsample_kernel_size=STRIDES[1:], filters=[8, 16, 32, 64], norm_name=("INSTANCE", {"affine": True}),
               **kw)


def test_each_decoder_stage_convolves_with_the_kernel_of_the_encoder_stage_at_its_resolution():
    net = _net()
    # upsamples[0] is the deepest decoder stage: it works at encoder level len - 2
    for i, up in enumerate(net.upsamples):
        level = len(KERNELS) - 2 - i
        for conv in (up.conv_block.conv1.conv, up.conv_block.conv2.conv):
            assert list(conv.weight.shape[2:]) == KERNELS[level], (i, level)


def test_only_the_decoder_kernels_differ_from_monai_dynunet():
    ours, monai = _net().state_dict(), _net(DynUNet).state_dict()
    assert ours.keys() == monai.keys()
    differing = {k for k in ours if ours[k].shape != monai[k].shape}
    # DynUNet gives the level-1 decoder stage (in-plane level) the 3x3x3 kernel of the level below
    # (skip_layers holds the same decoder modules under a second name)
    assert differing and all(".upsample." in k or k.startswith("upsamples.") for k in differing)
    assert {k for k in differing if k.startswith("upsamples.")} == {f"upsamples.1.conv_block.conv{i}.conv.weight" for i in (1, 2)}


def test_plain_conv_unet_scripts_and_keeps_the_input_size_with_deep_supervision_off():
    net = _net().eval()
    x = torch.randn(1, 1, 32, 32, 8)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)
        assert net(x).shape == (1, 3, 32, 32, 8)


def test_plain_conv_unet_returns_stacked_heads_when_training_with_deep_supervision():
    net = _net(deep_supervision=True, deep_supr_num=2).train()
    out = net(torch.randn(2, 1, 32, 32, 8))
    assert out.shape == (2, 3, 3, 32, 32, 8)
