"""nnU-Net preprocessing as MONAI transforms: normalisation, resampling (and its inverse), in-plane augmentation.

Reference behaviour: `shared/reference/unet-family.md` section 1 ("Normalisation", "Resampling",
"Augmentation"). Resampling is checked against plain scipy computed here, with the voxel grids aligned by
voxel area: output voxel j sits at input coordinate (j + 0.5) * n_in / n_out - 0.5.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    RandAffined,
)
from scipy import ndimage
from scipy.spatial.transform import Rotation

from custom_components.planning.planner import normalization_schemes
from custom_components.transforms import (
    AnisotropicResampled,
    CheckImaged,
    NormalizeIntensityByPland,
    is_nonzero,
    normalize_channel,
)
from custom_components.transforms.augmentation import InPlaned, spatial_augmentation
from custom_components.transforms.resampling import (
    output_shape,
    resample_image,
    resample_label,
    resample_probabilities,
    resample_volume,
    resampled_affine,
    separate_axis,
    spacing_from_affine,
)

CT_SCHEME = {"channel": 0, "scheme": "CT", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0, "use_nonzero_mask": False}


# --- scipy references ----------------------------------------------------------------------------------

def zoom_to(volume: np.ndarray, new_shape, order: int) -> np.ndarray:
    factors = [n / o for n, o in zip(new_shape, volume.shape)]
    out = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    assert out.shape == tuple(new_shape)
    return out


def nearest_source_index(j: int, n_in: int, n_out: int) -> int:
    """The input slice nearest to output slice j under voxel-area alignment (ties go up)."""
    coordinate = (j + 0.5) * n_in / n_out - 0.5
    return min(max(int(math.floor(coordinate + 0.5)), 0), n_in - 1)


def separate_z_reference(volume: np.ndarray, new_shape, axis: int, order: int) -> np.ndarray:
    """nnU-Net's separate-z resampling: each slice 2D with `order`, then nearest along the coarse `axis`."""
    moved = np.moveaxis(volume, axis, 0)
    plane_shape = [n for i, n in enumerate(new_shape) if i != axis]
    planes = np.stack([zoom_to(s, plane_shape, order) for s in moved])
    n_in, n_out = moved.shape[0], new_shape[axis]
    picked = np.stack([planes[nearest_source_index(j, n_in, n_out)] for j in range(n_out)])
    return np.moveaxis(picked, 0, axis)


def label_reference(label: np.ndarray, new_shape, axis) -> np.ndarray:
    """One binary mask per class, linear (in-plane + nearest along `axis`), thresholded at 0.5."""
    out = np.zeros(tuple(new_shape), label.dtype)
    for c in sorted(set(np.unique(label).tolist()) - {0}):
        mask = (label == c).astype(np.float32)
        resampled = zoom_to(mask, new_shape, 1) if axis is None else separate_z_reference(mask, new_shape, axis, 1)
        out[resampled >= 0.5] = c
    return out


def blob_label(shape, seed: int = 0, values=(1, 3)) -> np.ndarray:
    """Smooth random blobs of two classes (label values need not be contiguous)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    label = np.zeros(shape, np.uint8)
    label[field > 0.05] = values[0]
    label[field > 0.15] = values[1]
    return label


# --- normalisation -------------------------------------------------------------------------------------

def test_ct_normalisation_clips_to_plan_percentiles_then_uses_plan_mean_and_std():
    x = torch.tensor([-1000.0, -100.0, 0.0, 50.0, 200.0, 3000.0])
    # clip to [-100, 200], then (v - 50) / 25
    assert torch.allclose(normalize_channel(x, CT_SCHEME), torch.tensor([-6.0, -6.0, -2.0, 0.0, 6.0, 6.0]))


def test_ct_clipping_uses_dataset_foreground_percentiles():
    fingerprint = {
        "median_relative_size_after_crop": 1.0,
        "foreground_intensity_properties_per_channel": {"0": {
            "mean": 50.0, "median": 45.0, "std": 25.0, "min": -500.0, "max": 900.0,
            "percentile_00_5": -100.0, "percentile_99_5": 200.0}},
    }
    (scheme,) = normalization_schemes({"0": "CT"}, fingerprint)
    assert scheme["clip"] == [-100.0, 200.0] and scheme["mean"] == 50.0 and scheme["std"] == 25.0
    image = MetaTensor(torch.tensor([-500.0, -100.0, 100.0, 900.0]).reshape(1, 4, 1, 1))
    out = NormalizeIntensityByPland("image", [scheme])({"image": image})["image"]
    assert torch.allclose(out.flatten(), torch.tensor([-6.0, -6.0, 2.0, 6.0]))


def test_ct_normalisation_ignores_the_image_own_statistics():
    # Global statistics: 50 HU maps to 0 whatever else the image holds (per-image scaling would not).
    dark = torch.tensor([50.0, -1000.0, -1000.0, -1000.0]).reshape(1, 4, 1, 1)
    bright = torch.tensor([50.0, 150.0, 180.0, 3000.0]).reshape(1, 4, 1, 1)
    t = NormalizeIntensityByPland("image", [CT_SCHEME])
    assert float(t({"image": dark})["image"].flatten()[0]) == 0.0
    assert float(t({"image": bright})["image"].flatten()[0]) == 0.0


def test_zscore_is_per_image():
    scheme = {"channel": 0, "scheme": "zscore", "use_nonzero_mask": False}
    # mean 3, population std sqrt(5)
    out = normalize_channel(torch.tensor([0.0, 2.0, 4.0, 6.0]), scheme)
    assert torch.allclose(out, (torch.tensor([0.0, 2.0, 4.0, 6.0]) - 3.0) / math.sqrt(5.0))
    # another image, its own statistics: mean 20, std 10
    assert torch.allclose(normalize_channel(torch.tensor([10.0, 30.0]), scheme), torch.tensor([-1.0, 1.0]))


def test_zscore_with_nonzero_mask_keeps_zeros_outside_and_uses_masked_statistics():
    image = MetaTensor(torch.tensor([0.0, 0.0, 2.0, 4.0, 6.0, 0.0]).reshape(1, 6, 1, 1))
    scheme = {"channel": 0, "scheme": "zscore", "use_nonzero_mask": True}
    out = NormalizeIntensityByPland("image", [scheme])({"image": image})["image"].flatten()
    # inside: mean 4, population std sqrt(8/3); outside stays 0 (whole-image stats would move it)
    s = math.sqrt(8.0 / 3.0)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, -2.0 / s, 0.0, 2.0 / s, 0.0]), atol=1e-6)


def test_nonzero_mask_is_the_union_over_channels():
    # Voxel 1 is zero in channel 0 but nonzero in channel 1: it is inside the mask, so channel 0's zero there
    # counts in channel 0's statistics: masked values [0, 2, 4] -> mean 2, std sqrt(8/3).
    image = MetaTensor(torch.tensor([[0.0, 0.0, 2.0, 4.0], [0.0, 1.0, 1.0, 3.0]]).reshape(2, 4, 1, 1))
    schemes = [{"channel": c, "scheme": "zscore", "use_nonzero_mask": True} for c in (0, 1)]
    out = NormalizeIntensityByPland("image", schemes)({"image": image})["image"]
    s = math.sqrt(8.0 / 3.0)
    assert torch.allclose(out[0].flatten(), torch.tensor([0.0, -2.0 / s, 0.0, 2.0 / s]), atol=1e-6)


def test_each_channel_gets_its_own_plan_entry_and_metadata_is_kept():
    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.tensor([[300.0, 50.0], [1.0, 3.0]]).reshape(2, 2, 1, 1), affine=affine)
    schemes = [{"channel": 1, "scheme": "zscore", "use_nonzero_mask": False}, CT_SCHEME]  # given out of order
    out = NormalizeIntensityByPland("image", schemes)({"image": image})["image"]
    assert isinstance(out, MetaTensor)
    assert torch.equal(out.affine, affine)
    assert torch.allclose(out[0].flatten(), torch.tensor([6.0, 0.0]))  # CT: clip 300 -> 200; (200-50)/25
    assert torch.allclose(out[1].flatten(), torch.tensor([-1.0, 1.0]))  # zscore: mean 2, std 1


def test_normalisation_refuses_a_channel_count_other_than_the_plan():
    with pytest.raises(ValueError, match="channels"):
        NormalizeIntensityByPland("image", [CT_SCHEME])({"image": torch.zeros(2, 3, 3, 3)})


# --- geometry ------------------------------------------------------------------------------------------

def test_spacing_from_affine_on_a_rotated_and_flipped_affine():
    rotation = Rotation.from_rotvec([0.3, -0.5, 0.9]).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, -0.9, 3.0])  # flipped second axis
    affine[:3, 3] = [12.0, -40.0, 7.0]
    assert np.allclose(spacing_from_affine(affine), [0.8, 0.9, 3.0])


def test_spacing_from_affine_follows_array_axes_when_axes_are_permuted():
    affine = np.array([[0.0, 0.0, -3.0, 0.0], [0.7, 0.0, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert np.allclose(spacing_from_affine(affine), [0.7, 0.9, 3.0])


def test_output_shape_rounds_physical_size_over_target_spacing():
    # 12 x 0.8 / 1.0 = 9.6 -> 10; 10 x 0.8 / 1.0 = 8; 6 x 3.5 / 3.0 = 7
    assert output_shape((12, 10, 6), (0.8, 0.8, 3.5), (1.0, 1.0, 3.0)) == [10, 8, 7]


def test_output_shape_never_drops_an_axis_to_zero():
    assert output_shape((1, 10, 2), (1.0, 1.0, 1.0), (5.0, 1.0, 5.0)) == [1, 10, 1]


@pytest.mark.parametrize("spacing, target, expected", [
    ((0.8, 0.8, 3.5), (0.8, 0.8, 3.0), 2),   # anisotropic current spacing
    ((1.0, 1.0, 1.0), (1.0, 1.0, 4.0), 2),   # only the target is anisotropic
    ((3.5, 0.8, 0.8), (3.5, 0.8, 0.8), 0),   # the coarse axis may be first
    ((0.25, 1.25, 1.25), (0.25, 1.25, 1.25), None),  # two low-resolution axes: resample in 3D
    ((1.0, 1.0, 1.2), (1.0, 1.0, 1.0), None),  # isotropic enough
])
def test_separate_axis_follows_nnunet_anisotropy_rule(spacing, target, expected):
    assert separate_axis(spacing, target) == expected


def test_separate_axis_is_the_single_coarsest_axis_as_in_nnunet():
    # nnU-Net's get_lowres_axis: the axes whose spacing equals the maximum. For (1, 3.5, 4) that is axis 2
    # alone (max/min = 4 > 3), so nnU-Net resamples separately along axis 2, even though 3.5 is also > 3 x 1.
    assert separate_axis((1.0, 3.5, 4.0), (1.0, 3.5, 4.0)) == 2


def test_resampled_affine_keeps_the_field_of_view():
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_rotvec([0.2, 0.1, -0.4]).as_matrix() @ np.diag([0.8, 0.8, 3.5])
    affine[:3, 3] = [-30.0, 15.0, 100.0]
    old, new = (12, 10, 6), (15, 8, 9)
    new_affine = resampled_affine(affine, old, new)
    centre_old = affine @ np.array([*(np.array(old) - 1) / 2.0, 1.0])
    centre_new = new_affine @ np.array([*(np.array(new) - 1) / 2.0, 1.0])
    assert np.allclose(centre_old, centre_new)
    corner = np.array([-0.5, -0.5, -0.5, 1.0])  # outer edge of the first voxel
    assert np.allclose(affine @ corner, new_affine @ corner)
    far = np.array([*(np.array(old) - 0.5), 1.0])
    assert np.allclose(affine @ far, new_affine @ np.array([*(np.array(new) - 0.5), 1.0]))
    assert np.allclose(spacing_from_affine(new_affine), [0.8 * 12 / 15, 0.8 * 10 / 8, 3.5 * 6 / 9])


# --- resampling against scipy ---------------------------------------------------------------------------

def test_isotropic_resampling_is_3d_cubic_spline():
    volume = np.random.default_rng(0).normal(size=(12, 10, 6)).astype(np.float32)
    new_shape = (18, 12, 5)
    out = resample_volume(volume, new_shape, 3, None)
    assert np.allclose(out, zoom_to(volume, new_shape, 3), atol=1e-5)


@pytest.mark.parametrize("axis, new_shape", [(2, (15, 8, 9)), (2, (9, 13, 4)), (0, (9, 13, 8))])
def test_anisotropic_resampling_is_cubic_in_plane_and_nearest_through_plane(axis, new_shape):
    volume = np.random.default_rng(1).normal(size=(6, 10, 8) if axis == 0 else (12, 10, 6)).astype(np.float32)
    out = resample_volume(volume, new_shape, 3, axis)
    assert out.shape == new_shape
    assert np.allclose(out, separate_z_reference(volume, new_shape, axis, 3), atol=1e-5)


def test_anisotropic_resampling_is_not_cubic_through_plane():
    # Guard on the reference above: 3D cubic would give something else along the coarse axis.
    volume = np.random.default_rng(1).normal(size=(12, 10, 6)).astype(np.float32)
    out = resample_volume(volume, (15, 8, 9), 3, 2)
    assert not np.allclose(out, zoom_to(volume, (15, 8, 9), 3), atol=1e-3)


def test_resample_image_uses_separate_z_per_channel():
    image = np.random.default_rng(2).normal(size=(2, 12, 10, 6)).astype(np.float32)
    out = resample_image(image, (15, 8, 9), 2)
    assert out.dtype == np.float32 and out.shape == (2, 15, 8, 9)
    for c in range(2):
        assert np.allclose(out[c], separate_z_reference(image[c], (15, 8, 9), 2, 3), atol=1e-5)


def test_probabilities_go_back_linear_in_plane_and_nearest_through_plane():
    probs = np.random.default_rng(3).uniform(size=(3, 15, 8, 9)).astype(np.float32)
    out = resample_probabilities(probs, (12, 10, 6), 2)
    for c in range(3):
        assert np.allclose(out[c], separate_z_reference(probs[c], (12, 10, 6), 2, 1), atol=1e-6)


def test_label_downsampling_thresholds_each_class_mask_at_one_half():
    # mask [0 1 1 0 0 0] halved: output voxels sit at input coordinates 0.5, 2.5, 4.5 -> linear values
    # 0.5, 0.5, 0 -> class, class, background (nearest-neighbour would give class, background, background).
    label = np.array([0, 3, 3, 0, 0, 0], np.uint8).reshape(1, 6, 1, 1)
    assert resample_label(label, (3, 1, 1), None).ravel().tolist() == [3, 3, 0]


@pytest.mark.parametrize("axis, new_shape", [(None, (15, 8, 7)), (2, (15, 8, 9)), (2, (9, 13, 4))])
def test_label_resampling_matches_per_class_linear_reference(axis, new_shape):
    label = blob_label((12, 10, 6))
    out = resample_label(label[None], new_shape, axis)
    assert out.shape == (1, *new_shape) and out.dtype == np.uint8
    expected = label_reference(label, new_shape, axis)
    assert np.array_equal(out[0], expected)
    assert set(np.unique(out).tolist()) == {0, 1, 3}  # label values kept, none invented


# --- AnisotropicResampled and its inverse ---------------------------------------------------------------

def save(array: np.ndarray, path: Path, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def ellipsoid_case(shape=(24, 20, 8), spacing=(0.8, 0.8, 3.5)):
    """Label 1: an ellipsoid; label 2: a smaller one inside it; image = 50 x label plus noise."""
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    label = ((x / 7.0) ** 2 + (y / 6.0) ** 2 + (z / 10.0) ** 2 <= 1).astype(np.uint8)
    label[((x - 2.0) / 3.0) ** 2 + (y / 3.0) ** 2 + (z / 7.0) ** 2 <= 1] = 2
    image = (50.0 * label + np.random.default_rng(0).normal(0, 5, shape)).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    return image, label, affine


def load_case(tmp_path, spacing=(0.8, 0.8, 3.5)):
    image, label, affine = ellipsoid_case(spacing=spacing)
    files = {"image": save(image, tmp_path / "img.nii.gz", affine), "label": save(label, tmp_path / "lab.nii.gz", affine)}
    loaded = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"])])(files)
    return loaded, label


def one_hot_prediction(resampled: dict, num_classes: int = 3) -> MetaTensor:
    onehot = torch.nn.functional.one_hot(resampled["label"][0].long(), num_classes).permute(3, 0, 1, 2).float()
    return MetaTensor(onehot, affine=resampled["image"].affine, meta=dict(resampled["image"].meta))


@pytest.mark.parametrize("spacing, target, axis", [((0.8, 0.8, 3.5), (0.5, 0.5, 2.0), 2), ((0.8, 0.8, 1.2), (0.6, 0.6, 0.9), None)])
def test_resampled_prediction_inverts_to_the_original_grid(tmp_path, spacing, target, axis):
    loaded, label = load_case(tmp_path, spacing)
    original_affine = loaded["image"].affine.clone()
    resample = AnisotropicResampled(["image", "label"], target, label_keys="label")
    out = resample(dict(loaded))
    assert separate_axis(spacing, target) == axis
    new_shape = output_shape(label.shape, spacing, target)
    assert list(out["image"].shape[1:]) == new_shape == list(out["label"].shape[1:])
    assert np.allclose(spacing_from_affine(out["image"].affine.numpy()), np.array(spacing) * np.array(label.shape) / np.array(new_shape))
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 2}  # labels resampled as labels
    # the image follows nnU-Net's image resampling
    assert np.allclose(out["image"][0].numpy(), resample_image(loaded["image"].numpy(), new_shape, axis)[0], atol=1e-5)

    pred = one_hot_prediction(out)
    inverted = Invertd("pred", transform=resample, orig_keys="image", nearest_interp=False, to_tensor=True)(
        {"pred": pred, "image": out["image"]})["pred"]
    assert tuple(inverted.shape) == (3, *label.shape)
    assert torch.equal(inverted.affine, original_affine)
    agreement = float((inverted.argmax(0).numpy() == label).mean())
    assert agreement >= 0.99


def test_inverse_of_the_transform_itself_restores_shape_and_affine(tmp_path):
    loaded, label = load_case(tmp_path)
    resample = AnisotropicResampled("image", (0.5, 0.5, 2.0))
    out = resample({"image": loaded["image"]})["image"]
    prob = MetaTensor(torch.rand(2, *out.shape[1:]), affine=out.affine, meta=dict(out.meta),
                      applied_operations=list(out.applied_operations))
    back = resample.inverse({"image": prob})["image"]
    assert tuple(back.shape) == (2, *label.shape)
    assert torch.equal(back.affine, loaded["image"].affine)
    assert back.applied_operations == []


def test_inference_preprocessing_chain_inverts_to_the_input_geometry(tmp_path):
    # MR-like: a zero border that CropForegroundd removes, z-score inside the nonzero mask, anisotropic resampling.
    shape, affine = (24, 20, 8), np.diag([0.8, 0.8, 3.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    image = np.zeros(shape, np.float32)
    image[3:20, 2:17, 1:7] = np.random.default_rng(1).uniform(100, 300, (17, 15, 6))
    path = save(image, tmp_path / "mr.nii.gz", affine)
    preprocessing = Compose([
        LoadImaged("image", image_only=True),
        EnsureChannelFirstd("image"),
        CheckImaged("image", spatial_dims=3, num_channels=1),
        CropForegroundd("image", source_key="image", select_fn=is_nonzero, allow_smaller=True),
        NormalizeIntensityByPland("image", [{"channel": 0, "scheme": "zscore", "use_nonzero_mask": True}]),
        AnisotropicResampled("image", (0.5, 0.5, 2.0)),
        EnsureTyped("image"),
    ])
    out = preprocessing({"image": path})["image"]
    assert list(out.shape[1:]) == output_shape((17, 15, 6), (0.8, 0.8, 3.5), (0.5, 0.5, 2.0))  # cropped, resampled
    pred = MetaTensor(torch.rand(3, *out.shape[1:]) + 0.1, affine=out.affine, meta=dict(out.meta))
    inverted = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True)(
        {"pred": pred, "image": out})["pred"]
    reference = nib.load(path)
    assert tuple(inverted.shape) == (3, *shape)
    assert np.allclose(inverted.affine.numpy(), reference.affine, atol=1e-6, rtol=0)
    # the cropped border comes back as padding, the inside carries the prediction
    assert float(inverted[:, :3].abs().max()) == 0.0
    assert float(inverted[:, 3:20, 2:17, 1:7].min()) > 0.0


# --- in-plane augmentation ------------------------------------------------------------------------------

def slice_constant_volume(coarse_axis: int, n_slices: int = 5) -> tuple[MetaTensor, torch.Tensor]:
    shape = [12, 10, 10]
    shape[coarse_axis] = n_slices
    constants = 10.0 * torch.arange(1, n_slices + 1, dtype=torch.float32)
    view = [1, 1, 1, 1]
    view[coarse_axis + 1] = n_slices
    return MetaTensor(torch.ones(1, *shape) * constants.reshape(view)), constants


def assert_slices_not_mixed(out: torch.Tensor, constants: torch.Tensor, coarse_axis: int) -> None:
    """Slice k must be constant_k x W for one common 2D weight map W (bilinear is linear in the values):
    any value taken from a neighbouring slice breaks the proportionality."""
    slices = torch.movedim(torch.as_tensor(out)[0], coarse_axis, 0)
    weight = slices[0] / constants[0]
    assert ((weight - 1).abs() > 1e-3).any(), "the augmentation did nothing; the test would prove nothing"
    for k in range(len(constants)):
        assert torch.allclose(slices[k], constants[k] * weight, atol=1e-4), f"slice {k} mixes in other slices"


@pytest.mark.parametrize("coarse_axis", [2, 0])
def test_in_plane_rotation_never_mixes_slices_along_the_coarse_axis(coarse_axis):
    volume, constants = slice_constant_volume(coarse_axis)
    rotate = InPlaned(["image"], RandAffined(["image"], prob=1.0, rotate_range=(math.pi / 4,), mode="bilinear",
                                             padding_mode="zeros"), coarse_axis)
    rotate.set_random_state(0)
    out = rotate({"image": volume})["image"]
    assert out.shape == volume.shape
    assert_slices_not_mixed(out, constants, coarse_axis)


def test_dummy_2d_spatial_augmentation_never_mixes_slices():
    volume, constants = slice_constant_volume(2)
    augment = spatial_augmentation(["image"], ["bilinear"], dummy_2d=True, coarse_axis=2, rotation_prob=1.0,
                                   scale_prob=1.0, elastic_prob=1.0, elastic_sigma=(2.0, 3.0), elastic_magnitude=(1.0, 3.0))
    augment.set_random_state(0)
    out = augment({"image": volume})["image"]
    assert out.shape == volume.shape
    assert_slices_not_mixed(out, constants, 2)
