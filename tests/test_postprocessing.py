"""Connected-component post-processing and nnU-Net's rule for choosing it on out-of-fold predictions,
checked on small hand-made 20x20x8 volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from custom_components.evaluation.report import score_case
from custom_components.postprocessing.connected_components import (
    apply_postprocessing,
    choose_postprocessing,
    keep_largest_foreground,
    keep_largest_per_class,
)

SHAPE = (20, 20, 8)


def _volume(*boxes: tuple[tuple[slice, ...], int]) -> np.ndarray:
    v = np.zeros(SHAPE, dtype=np.uint8)
    for region, value in boxes:
        v[region] = value
    return v


def _mean_dice(cases, num_classes):
    """Per-class means over cases (NaNs skipped) and their mean, computed independently of the module."""
    table = np.array([score_case(torch.as_tensor(p), torch.as_tensor(l), num_classes)["dice"] for p, l in cases])
    per_class = np.nanmean(table, axis=0)
    return per_class, float(np.nanmean(per_class))


def test_largest_foreground_keeps_class_values_and_zeroes_other_components():
    organ = (np.s_[2:10, 2:10, 1:6], 1)
    tumour = (np.s_[10:13, 2:10, 1:6], 2)  # touches the organ: one foreground component with two classes
    label_map = _volume(organ, tumour, (np.s_[16:18, 16:18, 6:8], 2), (np.s_[0, 19, 0], 1))
    out = keep_largest_foreground(label_map)
    np.testing.assert_array_equal(out, _volume(organ, tumour))
    assert out.dtype == label_map.dtype


def test_components_touching_at_a_corner_are_connected_in_3d():
    label_map = _volume((np.s_[2:5, 2:5, 2:5], 1), (np.s_[5, 5, 5], 2), (np.s_[15:17, 15:17, 0:2], 1))
    out = keep_largest_foreground(label_map)
    assert out[5, 5, 5] == 2  # 26-connectivity: corner neighbour belongs to the 27-voxel cube's component
    assert out[15:17, 15:17, 0:2].sum() == 0


def test_largest_per_class_touches_only_the_listed_classes():
    label_map = _volume((np.s_[2:8, 2:8, 1:5], 1), (np.s_[15:17, 15:17, 6:8], 1),
                        (np.s_[12:16, 2:6, 1:5], 2), (np.s_[12:15, 12:15, 1:4], 2))
    original = label_map.copy()
    out = keep_largest_per_class(label_map, [1])
    np.testing.assert_array_equal(label_map, original)  # input untouched
    assert out[15:17, 15:17, 6:8].sum() == 0
    np.testing.assert_array_equal(out == 2, label_map == 2)
    np.testing.assert_array_equal(keep_largest_per_class(label_map, [2, 1]), keep_largest_per_class(label_map, [1, 2]))


def test_empty_label_map_is_returned_unchanged():
    empty = np.zeros(SHAPE, dtype=np.uint8)
    np.testing.assert_array_equal(keep_largest_foreground(empty), empty)
    np.testing.assert_array_equal(keep_largest_per_class(empty, [1, 2]), empty)


def test_decision_applies_largest_foreground_when_removing_spurious_components_raises_dice():
    label = _volume((np.s_[2:10, 2:10, 1:6], 1), (np.s_[10:14, 2:10, 1:6], 2))
    cases = []
    for spurious in (np.s_[16:18, 16:18, 6:8], np.s_[0:2, 17:20, 0:2], np.s_[17:19, 0:3, 7:8]):
        pred = label.copy()
        pred[spurious] = 1
        pred[19, 19, 0] = 2
        cases.append((pred, label))
    decision = choose_postprocessing(cases, num_classes=3)
    assert decision["largest_foreground"] is True
    assert decision["largest_per_class"] == []  # nothing left to remove after step 1
    assert decision["dice_after"]["mean"] == pytest.approx(1.0)
    assert decision["dice_before"]["mean"] < 1.0
    assert decision["dice_before"]["mean"] == pytest.approx(_mean_dice(cases, 3)[1])


def test_decision_rejects_largest_foreground_when_the_true_object_is_split_in_two():
    # two disconnected true parts of similar size (144 and 108 voxels): keeping the largest loses the other
    label = _volume((np.s_[2:8, 2:8, 1:5], 1), (np.s_[12:18, 12:18, 1:4], 1))
    pred = label.copy()
    pred[19, 0, 7] = 1  # a spurious voxel that the rule would also remove
    decision = choose_postprocessing([(pred, label)], num_classes=2)
    assert decision["largest_foreground"] is False
    assert decision["largest_per_class"] == []
    assert decision["dice_after"] == decision["dice_before"]
    assert decision["dice_before"]["per_class"]["1"] == pytest.approx(2 * 252 / (253 + 252))


def test_per_class_rule_is_accepted_for_one_class_and_rejected_for_another():
    organ = (np.s_[2:8, 2:8, 1:6], 1)
    lesion_parts = [(np.s_[12:16, 2:6, 1:5], 2), (np.s_[12:16, 12:16, 1:5], 2)]  # 64 voxels each, disconnected
    label = _volume(organ, *lesion_parts)
    pred = _volume(organ, *lesion_parts, (np.s_[2:4, 15:17, 6:8], 1))  # a spurious class-1 blob
    decision = choose_postprocessing([(pred, label)], num_classes=3)
    # step 1 keeps only the organ and loses class 2 entirely: rejected; then class 1 helps, class 2 hurts
    assert decision["largest_foreground"] is False
    assert decision["largest_per_class"] == [1]
    assert decision["dice_after"]["per_class"] == {"1": pytest.approx(1.0), "2": pytest.approx(1.0)}
    np.testing.assert_array_equal(apply_postprocessing(pred, decision), label)


def test_largest_foreground_is_rejected_when_the_mean_rises_but_one_class_gets_worse():
    organ = (np.s_[2:6, 2:6, 1:5], 1)  # 64 voxels
    attached_lesion = (np.s_[6:8, 2:6, 1:5], 2)  # 32 voxels, touching the organ
    separate_lesion = (np.s_[14:16, 14:16, 1:3], 2)  # 8 voxels, true but disconnected
    label = _volume(organ, attached_lesion, separate_lesion)
    pred = _volume(organ, attached_lesion, separate_lesion, (np.s_[15:18, 2:5, 4:7], 1))  # 27 spurious voxels
    cases = [(pred, label)]
    step1 = [(keep_largest_foreground(pred), label)]
    (before_1, before_2), before = _mean_dice(cases, 3)
    (after_1, after_2), after = _mean_dice(step1, 3)
    assert after > before and after_2 < before_2  # the hand-made trap: mean up, class 2 down
    decision = choose_postprocessing(cases, num_classes=3)
    assert decision["largest_foreground"] is False
    assert decision["largest_per_class"] == [1]
    assert decision["dice_after"]["per_class"]["2"] == pytest.approx(before_2)


def _random_cases(seed: int, n: int = 4):
    """An organ with a lesion on its edge, sometimes a second disconnected lesion, and 1% salt noise."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        label = np.zeros(SHAPE, np.uint8)
        x, y = rng.integers(1, 8, 2)
        sx, sy, sz = rng.integers(4, 9, 3)
        label[x:x + sx, y:y + sy, 1:1 + sz // 2 + 2] = 1
        label[x + sx:x + sx + 2, y:y + sy // 2, 1:4] = 2
        if rng.random() < 0.4:
            label[16:19, 16:19, 5:8] = 2
        pred = label.copy()
        noise = rng.random(SHAPE) < 0.01
        pred[noise] = rng.integers(1, 3, int(noise.sum()))
        cases.append((pred, label))
    return cases


def test_decision_never_makes_a_class_worse():
    decisions = [choose_postprocessing(_random_cases(seed), num_classes=3) for seed in range(6)]
    for decision in decisions:
        for c, before in decision["dice_before"]["per_class"].items():
            assert decision["dice_after"]["per_class"][c] >= before
        assert decision["dice_after"]["mean"] >= decision["dice_before"]["mean"]
    # the seeds exercise both outcomes of step 1 and different per-class choices
    assert {d["largest_foreground"] for d in decisions} == {True, False}
    assert len({tuple(d["largest_per_class"]) for d in decisions}) > 1


@pytest.mark.parametrize("seed", [2, 4])
def test_apply_postprocessing_reproduces_the_chosen_result(seed):
    cases = _random_cases(seed)
    decision = choose_postprocessing(cases, num_classes=3)
    applied = [(apply_postprocessing(p, decision), l) for p, l in cases]
    per_class, mean = _mean_dice(applied, 3)
    assert decision["dice_after"]["mean"] == pytest.approx(mean)
    assert [decision["dice_after"]["per_class"][str(c)] for c in (1, 2)] == pytest.approx(list(per_class))


def test_decision_is_json_serialisable_with_plain_values():
    cases = _random_cases(4, n=2)
    decision = choose_postprocessing(cases, num_classes=3)
    assert json.loads(json.dumps(decision, allow_nan=False)) == decision
    assert all(isinstance(c, int) for c in decision["largest_per_class"])


def test_class_absent_everywhere_is_reported_as_none():
    label = _volume((np.s_[2:8, 2:8, 1:5], 1))
    decision = choose_postprocessing([(label.copy(), label)], num_classes=3)
    assert decision["dice_before"]["per_class"]["2"] is None
    assert decision["dice_before"]["mean"] == pytest.approx(1.0)


def test_mismatched_prediction_and_label_shapes_are_rejected():
    with pytest.raises(ValueError, match="case 1"):
        choose_postprocessing([(np.zeros(SHAPE), np.zeros(SHAPE)), (np.zeros(SHAPE), np.zeros((20, 20, 7)))], 2)
    with pytest.raises(ValueError):
        choose_postprocessing([], 2)
