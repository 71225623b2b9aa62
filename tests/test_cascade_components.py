"""The 3D cascade's pieces: previous-stage one-hot and its perturbation, the two-stage network and its inferer."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import DynUNet
from monai.transforms import ConcatItemsd
from scipy import ndimage

from custom_components.inference.ensemble import FoldEnsemble
from custom_components.networks.cascade import CascadeInferer, CascadeNet
from custom_components.transforms.cascade import PreviousStageOneHotd, RandPerturbPreviousStaged, binary_morphology

NUM_CLASSES = 3


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny networks run ~100x faster on one thread than on two contended ones (seen: 3.5 ms vs 0.5 s a pass)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dynunet(in_channels: int, strides: list, spatial_dims: int = 3) -> DynUNet:
    """A tiny DynUNet built as `configs/dynunet.yaml` builds a stage."""
    return DynUNet(
        spatial_dims, in_channels, NUM_CLASSES, kernel_size=[3] * len(strides), strides=strides,
        upsample_kernel_size=strides[1:], filters=[4, 8, 16][: len(strides)],
        norm_name=("INSTANCE", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=False,
    )


def _cascade(in_channels: int = 1, spatial_dims: int = 3, lowres_factor=(2.0, 2.0, 1.0)) -> CascadeNet:
    torch.manual_seed(0)
    stage2_strides = [1, 2, [2, 2, 1]] if spatial_dims == 3 else [1, 2, 2]
    return CascadeNet(
        stage1=_dynunet(in_channels, [1, 2, 2], spatial_dims),
        stage2=_dynunet(in_channels + NUM_CLASSES - 1, stage2_strides, spatial_dims),
        num_classes=NUM_CLASSES,
        lowres_factor=list(lowres_factor)[:spatial_dims],
    ).eval()


def _blobs(shape, centres, radius=1) -> np.ndarray:
    """A binary mask of separate cubes of half-width `radius` around `centres`."""
    mask = np.zeros(shape, dtype=bool)
    for c in centres:
        mask[tuple(slice(max(p - radius, 0), p + radius + 1) for p in c)] = True
    return mask


def _onehot_channels(spatial_dims: int) -> np.ndarray:
    """Two foreground channels (3 and 2 blobs) and an empty one, on a 16x16(x8) grid."""
    shape = (16, 16, 8)[:spatial_dims]
    first = _blobs(shape, [(2, 2, 2), (8, 3, 5), (13, 12, 2)] if spatial_dims == 3 else [(2, 2), (8, 3), (13, 12)])
    second = _blobs(shape, [(3, 12, 5), (12, 5, 2)] if spatial_dims == 3 else [(3, 12), (12, 5)])
    return np.stack([first, second & ~first, np.zeros(shape, dtype=bool)]).astype(np.float32)


# ---------------------------------------------------------------- previous-stage channels


def test_previous_stage_onehot_drops_background_and_matches_torch_one_hot():
    labels = torch.randint(0, NUM_CLASSES, (1, 16, 16, 8))
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    seg = MetaTensor(labels.float(), affine=affine, meta={"filename_or_obj": "case_0001.nii.gz"})
    out = PreviousStageOneHotd("prev_seg", num_classes=NUM_CLASSES)({"prev_seg": seg})["prev_seg"]
    expected = torch.nn.functional.one_hot(labels[0], NUM_CLASSES).permute(3, 0, 1, 2)[1:].float()
    assert out.shape == (NUM_CLASSES - 1, 16, 16, 8) and out.dtype == torch.float32
    assert torch.equal(out.as_tensor(), expected)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, affine)
    assert out.meta["filename_or_obj"] == "case_0001.nii.gz"


def test_monai_concat_items_stacks_previous_stage_behind_the_image_and_keeps_its_metadata():
    image = MetaTensor(torch.randn(2, 8, 8, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    prev = PreviousStageOneHotd("prev_seg", NUM_CLASSES)({"prev_seg": MetaTensor(torch.ones(1, 8, 8, 4))})["prev_seg"]
    out = ConcatItemsd(["image", "prev_seg"], "image", dim=0)({"image": image, "prev_seg": prev})["image"]
    assert out.shape == (2 + NUM_CLASSES - 1, 8, 8, 4)
    assert torch.equal(out[:2].as_tensor(), image.as_tensor()) and torch.equal(out.affine, image.affine)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_distance_transform_morphology_equals_scipy_with_a_ball_and_skimage_borders(spatial_dims):
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((20, 18, 10)[:spatial_dims]) > 0.45)
    mask[0:4] = True  # a structure cut by the border: erosion must not eat it from outside
    for radius in (1, 2, 3):
        grid = np.mgrid[tuple(slice(-radius, radius + 1) for _ in range(spatial_dims))]
        ball = (grid ** 2).sum(0) <= radius ** 2
        dilation = ndimage.binary_dilation(mask, ball, border_value=0)
        erosion = ndimage.binary_erosion(mask, ball, border_value=1)
        assert np.array_equal(binary_morphology(mask, "dilation", radius), dilation)
        assert np.array_equal(binary_morphology(mask, "erosion", radius), erosion)
        assert np.array_equal(binary_morphology(mask, "opening", radius), ndimage.binary_dilation(erosion, ball, border_value=0))
        assert np.array_equal(binary_morphology(mask, "closing", radius), ndimage.binary_erosion(dilation, ball, border_value=1))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_perturbation_with_zero_probabilities_is_the_identity(spatial_dims):
    onehot = MetaTensor(torch.from_numpy(_onehot_channels(spatial_dims)), meta={"filename_or_obj": "x"})
    out = RandPerturbPreviousStaged(morphology_prob=0.0, removal_prob=0.0).set_random_state(3)({"prev_seg": onehot})["prev_seg"]
    assert torch.equal(out.as_tensor(), onehot.as_tensor()) and out.meta["filename_or_obj"] == "x"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_removal_probability_one_removes_exactly_one_component_per_nonempty_channel(spatial_dims):
    onehot = _onehot_channels(spatial_dims)
    structure = np.ones((3,) * spatial_dims)
    for seed in range(5):
        t = RandPerturbPreviousStaged(morphology_prob=0.0, removal_prob=1.0).set_random_state(seed)
        out = t({"prev_seg": torch.from_numpy(onehot)})["prev_seg"].numpy().astype(bool)
        for before, after in zip(onehot.astype(bool), out):
            labels, n = ndimage.label(before, structure=structure)
            removed = before & ~after
            assert not (after & ~before).any()
            if n == 0:
                assert not after.any()
                continue
            assert ndimage.label(after, structure=structure)[1] == n - 1
            assert len(np.unique(labels[removed])) == 1 and np.array_equal(removed, labels == labels[removed][0])


def test_removal_spares_components_larger_than_the_patch_fraction():
    mask = _blobs((16, 16, 8), [(8, 8, 4)], radius=4)  # 9*9*8 voxels: about 40% of the patch
    onehot = torch.from_numpy(mask[None].astype(np.float32))
    out = RandPerturbPreviousStaged(morphology_prob=0.0, removal_prob=1.0).set_random_state(0)({"prev_seg": onehot})
    assert torch.equal(out["prev_seg"], onehot)


def test_morphology_probability_one_changes_every_mask_and_keeps_it_binary_and_one_hot():
    shape = (16, 16, 8)
    first = _blobs(shape, [(6, 6, 4)], radius=3)
    first[6, 6, 4] = False  # a hole that closing fills
    first[14, 14, 1] = True  # a lone voxel that opening and erosion remove
    second = _blobs(shape, [(12, 4, 4)], radius=2) & ~first
    onehot = torch.from_numpy(np.stack([first, second]).astype(np.float32))
    for operation in ("dilation", "erosion", "opening", "closing"):
        for seed in range(3):
            t = RandPerturbPreviousStaged(morphology_prob=1.0, removal_prob=0.0, operations=(operation,))
            out = t.set_random_state(seed)({"prev_seg": onehot})["prev_seg"]
            assert out.dtype == onehot.dtype and set(torch.unique(out).tolist()) <= {0.0, 1.0}
            assert out.sum(0).max() <= 1  # voxels one channel gains are taken from the others
            assert not torch.equal(out[0], onehot[0]), operation


def test_perturbation_is_reproducible_with_the_same_seed():
    onehot = torch.from_numpy(_onehot_channels(3))

    def run(seed):
        t = RandPerturbPreviousStaged(morphology_prob=0.5, removal_prob=0.5).set_random_state(seed)
        return [t({"prev_seg": onehot})["prev_seg"] for _ in range(4)]

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


# ---------------------------------------------------------------- network and inferer


@pytest.mark.parametrize("spatial_dims, size", [(3, (16, 16, 8)), (3, (18, 14, 9)), (2, (18, 14))])
def test_cascade_returns_stage2_logits_at_the_input_size(spatial_dims, size):
    net = _cascade(in_channels=2, spatial_dims=spatial_dims)
    with torch.no_grad():
        out = net(torch.randn(1, 2, *size))
    assert out.shape == (1, NUM_CLASSES, *size)


def test_stage1_sees_the_image_downsampled_by_the_lowres_factor_and_padded_to_its_strides():
    net = _cascade(lowres_factor=(2.0, 2.0, 1.0))
    seen = []
    net.stage1.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        net(torch.randn(1, 1, 18, 14, 9))
    # low-res size round(18/2, 14/2, 9/1) = 9, 7, 9; stage 1 strides multiply to 4 per axis
    assert seen == [(1, 1, 12, 8, 12)]
    assert list(net.lowres_input(torch.randn(1, 1, 18, 14, 9)).shape[2:]) == [9, 7, 9]


def test_stage2_receives_the_image_plus_one_channel_per_foreground_class():
    net = _cascade(in_channels=2)
    first_conv = net.stage2.input_block.conv1.conv
    seen = []
    first_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        net(torch.randn(1, 2, 16, 16, 8))
    assert first_conv.in_channels == 2 + NUM_CLASSES - 1 and seen == [2 + NUM_CLASSES - 1]


def test_scripted_cascade_round_trips_through_save_and_load_and_matches_eager():
    net = _cascade()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(1, 1, 18, 14, 9)
    with torch.no_grad():
        eager, scripted = torch.softmax(net(x), 1), torch.softmax(loaded(x), 1)
        eager1, scripted1 = net.stage1_probabilities(x), loaded.stage1_probabilities(x)
    assert torch.allclose(eager, scripted, atol=1e-4) and torch.allclose(eager1, scripted1, atol=1e-4)


def test_inferer_equals_the_network_when_one_window_covers_each_stage():
    net = _cascade()
    x = torch.randn(1, 1, 16, 16, 8)
    inferer = CascadeInferer(roi_size=[16, 16, 8], lowres_roi_size=[8, 8, 8])
    with torch.no_grad():
        assert torch.allclose(inferer(x, net), net(x), atol=1e-4)


def test_inferer_slides_both_stages_over_a_larger_image_with_mirroring():
    net = _cascade()
    x = torch.randn(1, 1, 36, 28, 12)
    inferer = CascadeInferer(roi_size=[16, 16, 8], lowres_roi_size=[8, 8, 8], mirror_axes=[0])
    with torch.no_grad():
        out = inferer(x, net)
    assert out.shape == (1, NUM_CLASSES, 36, 28, 12) and torch.isfinite(out).all()


def test_inferer_on_a_fold_ensemble_of_equal_cascades_equals_one_cascade():
    net = _cascade()
    x = torch.randn(1, 1, 20, 20, 8)
    inferer = CascadeInferer(roi_size=[16, 16, 8], lowres_roi_size=[8, 8, 8])
    with torch.no_grad():
        single = torch.softmax(inferer(x, net), 1)
        ensemble = torch.softmax(inferer(x, FoldEnsemble([net, net])), 1)
    assert torch.allclose(single, ensemble, atol=1e-5)
