"""Networks of the U-Net family (nnU-Net uses MONAI DynUNet, configured from the plan in the bundle config)."""

from custom_components.networks.cascade import CascadeInferer, CascadeNet, spacing_ratio, with_stage1_weights
