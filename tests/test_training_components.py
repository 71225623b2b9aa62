"""Loss, schedules, checkpointing, mirroring inference and scoring, each against a small hand-computed case."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.losses import DiceCELoss

from custom_components.evaluation.report import score_case, summarise
from custom_components.inference.mirroring import MirroredSlidingWindowInferer, mirror_combinations
from custom_components.losses import DeepSupervisionDiceCELoss, SoftmaxMSELoss
from custom_components.training.checkpoint import ResumableCheckpoint, rng_state, set_rng_state
from custom_components.training.schedules import PlateauSchedule, PolySchedule, build_optimizer, build_schedule


def test_deep_supervision_loss_weights_heads_like_nnunet():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8, 4))
    heads = torch.randn(2, 2, 3, 8, 8, 4)
    loss = DeepSupervisionDiceCELoss(weights=[2 / 3, 1 / 3])(heads, target)
    plain = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5, batch=True)
    expected = 2 / 3 * plain(heads[:, 0], target) + 1 / 3 * plain(heads[:, 1], target)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_deep_supervision_loss_normalises_weights_and_accepts_a_single_output():
    torch.manual_seed(1)
    target = torch.randint(0, 2, (1, 1, 6, 6, 6))
    pred = torch.randn(1, 2, 6, 6, 6)
    a = DeepSupervisionDiceCELoss(weights=[4.0, 2.0])(torch.stack([pred, pred], 1), target)
    b = DeepSupervisionDiceCELoss(weights=[1.0])(pred, target)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def _engine_with_losses(losses, optimizer, schedule):
    it = iter(losses)

    def step(engine, batch):
        return [{"loss": torch.tensor(next(it))}]

    engine = Engine(step)
    schedule.attach(engine)
    return engine


def test_softmax_mse_loss_is_the_mean_squared_error_of_probabilities_against_one_hot():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.0, 3.0]]]])  # (B=1, C=2, 1, 2)
    label = torch.tensor([[[[0, 1]]]])
    p = torch.softmax(logits, dim=1)
    expected = ((p[0, 0, 0, 0] - 1) ** 2 + p[0, 1, 0, 0] ** 2 + p[0, 0, 0, 1] ** 2 + (p[0, 1, 0, 1] - 1) ** 2) / 4
    assert torch.isclose(SoftmaxMSELoss()(logits, label), expected)
    confident = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])
    assert SoftmaxMSELoss()(confident, label) < 1e-12


def test_softmax_mse_loss_refuses_a_label_of_another_size():
    with pytest.raises(ValueError, match="label"):
        SoftmaxMSELoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 3))


def test_adam_uses_amsgrad_unless_a_recipe_turns_it_off():
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert build_optimizer(p, {"optimizer": "adam", "lr": 1e-3}).defaults["amsgrad"] is True
    assert build_optimizer(p, {"optimizer": "adam", "lr": 1e-3, "amsgrad": False}).defaults["amsgrad"] is False


def test_plateau_schedule_cuts_lr_after_patience_and_stops_below_min_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], {"optimizer": "adam", "lr": 1e-3, "weight_decay": 3e-5})
    schedule = PlateauSchedule(opt, factor=0.2, patience=2, threshold=1e-3, min_lr=1e-4, loss_ma_alpha=0.0)
    lrs = []
    engine = _engine_with_losses([1.0] * 50, opt, schedule)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
    engine.run(range(1), max_epochs=50)
    # a flat loss: after `patience` epochs without improvement the lr drops by 0.2 each time ...
    assert lrs[:3] == pytest.approx([1e-3, 1e-3, 1e-3]) and lrs[3] == pytest.approx(2e-4)
    # ... and training stops once it falls below min_lr (1e-3 -> 2e-4 -> 4e-5 < 1e-4)
    assert lrs[-1] == pytest.approx(4e-5) and engine.state.epoch == len(lrs) < 50


def test_plateau_schedule_keeps_lr_while_loss_improves():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], {"optimizer": "adam", "lr": 3e-4})
    schedule = PlateauSchedule(opt, patience=2, loss_ma_alpha=0.93)
    engine = _engine_with_losses([1.0 - 0.05 * i for i in range(10)], opt, schedule)
    engine.run(range(1), max_epochs=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-4)


def test_poly_schedule_follows_nnunet_v2_formula():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.99, "nesterov": True})
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["nesterov"]
    schedule = PolySchedule(opt, max_epochs=10, power=0.9)
    seen = []
    engine = Engine(lambda e, b: [{"loss": torch.tensor(1.0)}])
    engine.register_events(*IterationEvents)  # as MONAI's trainers do
    schedule.attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(opt.param_groups[0]["lr"]))
    engine.run(range(1), max_epochs=4)
    assert seen == pytest.approx([1e-2 * (1 - k / 10) ** 0.9 for k in range(4)])


@pytest.mark.parametrize("settings, expected", [
    ({"kind": "step", "step_epochs": 2, "step_gamma": 0.1}, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5]),
    ({"kind": "constant"}, [1e-3] * 5),
])
def test_step_and_constant_schedules_set_the_lr_each_epoch(settings, expected):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], {"optimizer": "adam", "lr": 1e-3})
    schedule = build_schedule(opt, settings, max_epochs=5)
    seen = []
    engine = Engine(lambda e, b: [{"loss": torch.tensor(1.0)}])
    schedule.attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(opt.param_groups[0]["lr"]))
    engine.run(range(1), max_epochs=5)
    assert seen == pytest.approx(expected)


def test_checkpoint_restores_weights_optimizer_epoch_and_rng(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ckpt = ResumableCheckpoint(str(tmp_path), net, opt)
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.iteration = 3, 30
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    ckpt.save(engine)
    expected = (torch.rand(1).item(), np.random.rand(), random.random())
    saved = {k: v.clone() for k, v in net.state_dict().items()}

    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    engine2 = Engine(lambda e, b: None)
    engine2.state.max_epochs = 10
    ResumableCheckpoint(str(tmp_path), net2, opt2).load(engine2)
    assert engine2.state.epoch == 3 and engine2.state.iteration == 30
    for k, v in net2.state_dict().items():
        assert torch.equal(v, saved[k])
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == expected
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_final_model_leaves_out_training_only_weights(tmp_path):
    net = torch.nn.Sequential()
    net.add_module("body", torch.nn.Linear(2, 2))
    net.add_module("deep_supervision_heads", torch.nn.Linear(2, 2))
    ckpt = ResumableCheckpoint(str(tmp_path), net, torch.optim.SGD(net.parameters(), lr=0.1),
                               exclude_weights=[r"^deep_supervision_heads\."])
    ckpt.save_final(Engine(lambda e, b: None))
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == {"body.weight", "body.bias"}


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    a = np.random.rand()
    set_rng_state(loaded)
    assert np.random.rand() == a


def test_mirroring_averages_all_eight_flips():
    assert len(mirror_combinations([0, 1, 2])) == 7
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    x = torch.randn(1, 1, 8, 8, 4)
    inferer = MirroredSlidingWindowInferer(roi_size=[8, 8, 4], mirror_axes=[0, 1, 2])
    with torch.no_grad():
        got = inferer(x, net)
        expected = net(x)
        for axes in mirror_combinations([2, 3, 4]):
            expected = expected + torch.flip(net(torch.flip(x, axes)), axes)
        expected = expected / 8
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_without_mirror_axes_the_inferer_is_a_plain_sliding_window():
    net = torch.nn.Conv3d(1, 2, 1).eval()
    x = torch.randn(1, 1, 12, 12, 6)
    with torch.no_grad():
        got = MirroredSlidingWindowInferer(roi_size=[8, 8, 4], mirror_axes=[])(x, net)
        torch.testing.assert_close(got, net(x), atol=1e-5, rtol=1e-5)


def test_tile_mirroring_equals_volume_mirroring_where_one_tile_covers_the_volume():
    """nnU-Net mirrors each tile, the reference path the whole volume: the same where the window grid is one tile;
    a larger volume's tiles sit elsewhere in the mirrored copies, so there the two only approximate each other."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    x = torch.randn(1, 1, 8, 8, 4)
    with torch.no_grad():
        reference = MirroredSlidingWindowInferer(roi_size=[8, 8, 4], mirror_axes=[0, 1, 2])(x, net)
        tiled = MirroredSlidingWindowInferer(roi_size=[8, 8, 4], mirror_axes=[0, 1, 2], tile_mirroring=True,
                                             channels_last=True)(x, net)
        one_at_a_time = MirroredSlidingWindowInferer(roi_size=[8, 8, 4], mirror_axes=[0, 1, 2], tile_mirroring="true",
                                                     mirror_batch=1)(x, net)
    torch.testing.assert_close(tiled, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_at_a_time, reference, atol=1e-5, rtol=1e-5)
    off = MirroredSlidingWindowInferer(roi_size=[8, 8, 4], tile_mirroring="false", channels_last="False")
    assert not off.tile_mirroring and not off.channels_last  # command-line strings are read as flags


def test_bfloat16_inference_keeps_probabilities_within_0_02_of_float32():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.LeakyReLU(0.01),
                              torch.nn.Conv3d(8, 3, 3, padding=1)).eval()
    x = torch.randn(1, 1, 12, 12, 6)
    with torch.no_grad():
        reference = MirroredSlidingWindowInferer(roi_size=[8, 8, 4], mirror_axes=[0, 1])(x, net)
        fast = MirroredSlidingWindowInferer(roi_size=[8, 8, 4], mirror_axes=[0, 1], precision="bfloat16")(x, net)
    assert fast.dtype == torch.float32
    gap = (torch.softmax(fast, 1) - torch.softmax(reference, 1)).abs().max()
    assert 0 < gap < 0.02  # bfloat16 keeps 8 bits of mantissa: close, not equal
    with pytest.raises(ValueError, match="precision must be one of"):
        MirroredSlidingWindowInferer(roi_size=[8, 8, 4], precision="float16")


def test_score_case_dice_and_hd95_on_hand_made_masks():
    label = torch.zeros(1, 10, 10, 10, dtype=torch.long)
    label[0, 2:6, 2:6, 2:6] = 1  # 64 voxels
    pred = torch.zeros_like(label)
    pred[0, 2:6, 2:6, 2:4] = 1  # 32 voxels, all inside
    scores = score_case(pred, label, num_classes=3, spacing=[1.0, 1.0, 2.0])
    assert scores["dice"][0] == pytest.approx(2 * 32 / (64 + 32))
    assert np.isnan(scores["dice"][1]) and np.isnan(scores["hd95"][1])  # class 2 absent from both
    assert scores["hd95"][0] > 0
    summary = summarise([dict(scores, case="a")], ["one", "two"])
    assert summary["mean_dice"] == pytest.approx(2 * 32 / 96, abs=1e-6) and summary["per_class"]["two"]["dice"] is None


def test_fold_ensemble_inference_averages_member_softmax_outputs():
    from custom_components.inference.ensemble import FoldEnsemble

    torch.manual_seed(0)
    members = [torch.nn.Conv3d(1, 3, 3, padding=1).eval() for _ in range(3)]
    x = torch.randn(1, 1, 8, 8, 4)
    inferer = MirroredSlidingWindowInferer(roi_size=[8, 8, 4], mirror_axes=[])
    with torch.no_grad():
        out = torch.softmax(inferer(x, FoldEnsemble(members)), dim=1)  # the bundle's post-processing softmax
        expected = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_inference_network_is_the_fold_ensemble_when_fold_models_exist(tmp_path):
    from custom_components.inference.ensemble import FoldEnsemble, load_inference_network

    net = torch.nn.Conv3d(1, 2, 1)
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_3").mkdir()
    torch.save(net.state_dict(), tmp_path / "fold_0" / "model.pt")
    torch.save(net.state_dict(), tmp_path / "fold_3" / "model.pt")
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ens = load_inference_network(net, str(tmp_path))
    assert isinstance(ens, FoldEnsemble) and len(ens.members) == 2
    assert not isinstance(load_inference_network(net, str(tmp_path), folds="3"), FoldEnsemble)
    assert not isinstance(load_inference_network(net, str(tmp_path / "fold_0")), FoldEnsemble)  # its model.pt


def test_bfloat16_training_step_keeps_float32_weights_and_gradients_close_to_float32():
    from custom_components.training import AutocastInferer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.InstanceNorm3d(8, affine=True),
                              torch.nn.LeakyReLU(0.01), torch.nn.Conv3d(8, 3, 1))
    x, y = torch.randn(2, 1, 12, 12, 6), torch.randint(0, 3, (2, 12, 12, 6))
    grads = {}
    for precision in ("float32", "bfloat16"):
        net.zero_grad()
        out = AutocastInferer(precision)(x, net)
        assert out.dtype == torch.float32
        torch.nn.functional.cross_entropy(out, y).backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in net.parameters()])
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in net.parameters())
    cosine = torch.nn.functional.cosine_similarity(grads["float32"], grads["bfloat16"], dim=0)
    assert not torch.equal(grads["float32"], grads["bfloat16"])  # the forward really ran in bfloat16
    assert cosine > 0.99
    with pytest.raises(ValueError, match="precision must be one of"):
        AutocastInferer("float16")
