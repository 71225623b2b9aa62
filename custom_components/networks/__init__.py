"""Networks of the U-Net family: nnU-Net's (MONAI DynUNet, configured from the plan in the bundle config) and its
cascade, and the four papers' networks, each 2D and 3D from one class."""

from custom_components.networks.attention_unet import AttentionUNet
from custom_components.networks.dynunet import PlainConvUNet
from custom_components.networks.cascade import CascadeInferer, CascadeNet, spacing_ratio, with_stage1_weights
from custom_components.networks.multires_unet import MultiResUNet
from custom_components.networks.nonlocal_unet import NonLocalUNet
from custom_components.networks.residual_unet import ResidualUNet
from custom_components.networks.topology import level_features
