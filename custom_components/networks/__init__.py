"""Networks of the U-Net family (nnU-Net uses MONAI DynUNet, configured from the plan in the bundle config)."""
