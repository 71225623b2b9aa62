"""A stand-in for torchvision inside the MONAI Label environment only: PyPI's torchvision binary does not load
beside CPU torch 2.13, and MONAI Label imports `torchvision.utils` at the top of a module it always loads, for
debug-image helpers these bundles never use."""
