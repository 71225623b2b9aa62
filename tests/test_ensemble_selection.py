"""Ensembles average softmax probabilities; the best single configuration or pair is chosen by CV Dice
(nnU-Net's find_best_configuration), checked on small hand-made 20x20x8 volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from custom_components.data.errors import DatasetError
from custom_components.ensembling import average_probabilities, candidate_ensembles, score_candidates, select_best

SHAPE = (20, 20, 8)


def test_average_of_tensors_equals_arithmetic_mean_of_members_softmax():
    torch.manual_seed(0)
    members = [torch.softmax(torch.randn(3, *SHAPE), dim=0) for _ in range(3)]
    avg = average_probabilities(members)
    assert isinstance(avg, torch.Tensor)
    torch.testing.assert_close(avg, (members[0] + members[1] + members[2]) / 3)
    torch.testing.assert_close(avg.sum(0), torch.ones(SHAPE))  # still a distribution per voxel


def test_average_of_numpy_arrays_is_a_numpy_array_and_leaves_members_untouched():
    torch.manual_seed(1)
    members = [torch.softmax(torch.randn(2, *SHAPE), dim=0).numpy() for _ in range(2)]
    copies = [m.copy() for m in members]
    avg = average_probabilities(members)
    assert isinstance(avg, np.ndarray)
    np.testing.assert_allclose(avg, (copies[0] + copies[1]) / 2, rtol=1e-6)
    for m, c in zip(members, copies):
        np.testing.assert_array_equal(m, c)


def test_average_rejects_no_members_mixed_types_and_mismatched_shapes():
    p = np.full((2, *SHAPE), 0.5, dtype=np.float32)
    with pytest.raises(ValueError):
        average_probabilities([])
    with pytest.raises(TypeError):
        average_probabilities([p, torch.from_numpy(p)])
    with pytest.raises(ValueError, match="member 1"):
        average_probabilities([p, p[:, :10]])


def test_three_configurations_give_three_singles_and_three_pairs():
    assert candidate_ensembles(["2d", "3d_fullres", "3d_lowres"]) == [
        ("2d",), ("3d_fullres",), ("3d_lowres",),
        ("2d", "3d_fullres"), ("2d", "3d_lowres"), ("3d_fullres", "3d_lowres"),
    ]
    with pytest.raises(ValueError):
        candidate_ensembles(["2d", "2d"])


def test_select_best_picks_the_pair_when_it_scores_higher():
    scores = {("2d",): 0.80, ("3d_fullres",): 0.85, ("2d", "3d_fullres"): 0.87}
    assert select_best(scores) == ("2d", "3d_fullres")


def test_select_best_picks_the_single_when_it_scores_higher():
    scores = {("2d",): 0.80, ("3d_fullres",): 0.88, ("2d", "3d_fullres"): 0.87}
    assert select_best(scores) == ("3d_fullres",)


def test_ties_go_to_the_smaller_ensemble_then_to_name_order():
    assert select_best({("2d", "3d_fullres"): 0.9, ("3d_fullres",): 0.9}) == ("3d_fullres",)
    assert select_best({("3d_lowres",): 0.9, ("3d_fullres",): 0.9, ("2d",): 0.5}) == ("3d_fullres",)
    assert select_best({("a", "c"): 0.9, ("a", "b"): 0.9}) == ("a", "b")
    assert select_best({("2d",): float("nan"), ("3d_fullres",): 0.1}) == ("3d_fullres",)


def _complementary_oof():
    """Label: class 1 and class 2 boxes. '2d' is right on class 1 and misses class 2; '3d_fullres' the reverse;
    '3d_lowres' sees class 1 only, half of it. Averaging '2d' and '3d_fullres' is right everywhere."""
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:8, 2:8, 1:6] = 1
    label[12:18, 12:18, 2:7] = 2
    c1, c2 = label == 1, label == 2

    def probs(on_1, on_2, rest=(0.9, 0.05, 0.05)):
        p = np.empty((3, *SHAPE), dtype=np.float32)
        p[:] = np.asarray(rest, dtype=np.float32)[:, None, None, None]
        p[:, c1] = np.asarray(on_1, dtype=np.float32)[:, None]
        p[:, c2] = np.asarray(on_2, dtype=np.float32)[:, None]
        return p

    lowres = probs((0.05, 0.9, 0.05), (0.9, 0.05, 0.05))
    lowres[:, 5:8, 2:8, 1:6] = np.asarray([0.9, 0.05, 0.05], dtype=np.float32)[:, None, None, None]
    oof = {
        "2d": {"case_0": probs((0.05, 0.9, 0.05), (0.5, 0.1, 0.4))},
        "3d_fullres": {"case_0": probs((0.5, 0.4, 0.1), (0.05, 0.05, 0.9))},
        "3d_lowres": {"case_0": lowres},
    }
    return oof, {"case_0": label}


def test_pair_of_complementary_configurations_scores_best():
    oof, labels = _complementary_oof()
    scores = score_candidates(oof, labels, num_classes=3)
    assert set(scores) == set(candidate_ensembles(["2d", "3d_fullres", "3d_lowres"]))
    assert scores[("2d",)] == pytest.approx(0.5)  # class 1 perfect, class 2 missed
    assert scores[("3d_fullres",)] == pytest.approx(0.5)
    assert scores[("3d_lowres",)] == pytest.approx((2 * 90 / (90 + 180) + 0.0) / 2)
    assert scores[("2d", "3d_fullres")] == pytest.approx(1.0)
    assert all(type(v) is float for v in scores.values())
    assert select_best(scores) == ("2d", "3d_fullres")


def test_scores_average_per_class_means_over_cases_skipping_absent_classes():
    oof, labels = _complementary_oof()
    # a second case without class 2 where '2d' is perfect: class 2 is NaN there and must not count
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:10, 4:10, 2:5] = 1
    perfect = np.stack([label == 0, label == 1, np.zeros(SHAPE, bool)]).astype(np.float32)
    for config in oof:
        oof[config]["case_1"] = perfect
    labels["case_1"] = label
    scores = score_candidates(oof, labels, num_classes=3)
    assert scores[("2d",)] == pytest.approx((1.0 + 0.0) / 2)  # class 1: mean(1, 1); class 2: mean(0) only


def test_missing_case_or_wrong_shape_names_the_configuration_and_case():
    oof, labels = _complementary_oof()
    del oof["3d_lowres"]["case_0"]
    with pytest.raises(ValueError, match=r"'3d_lowres'.*'case_0'"):
        score_candidates(oof, labels, num_classes=3)
    oof, labels = _complementary_oof()
    oof["3d_fullres"]["case_0"] = oof["3d_fullres"]["case_0"][:, :, :, :4]
    with pytest.raises(ValueError, match=r"'3d_fullres', case 'case_0'"):
        score_candidates(oof, labels, num_classes=3)


def _metrics(folder, mean, organ):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"mean_dice": mean, "num_cases": 2, "per_class": {"organ": {"dice": organ}, "lesion": {"dice": None}}}))


def test_comparison_reports_the_ensemble_margin_over_the_best_single_run(tmp_path):
    from custom_components.evaluation.comparison import compare_runs, comparison_lines

    _metrics(tmp_path / "ensemble", 0.90, 0.90)
    _metrics(tmp_path / "a_fold_0", 0.93, 0.93)
    _metrics(tmp_path / "b_fold_1", None, None)  # every case NaN: skipped, and printed as n/a
    result = compare_runs(tmp_path)
    assert result["best_other"] == "a_fold_0" and result["margin"] == pytest.approx(-0.03)
    text = "\n".join(comparison_lines(result))
    assert "lesion n/a" in text and "difference -0.0300" in text


def test_comparison_without_the_reference_run_names_it(tmp_path):
    from custom_components.evaluation.comparison import compare_runs

    _metrics(tmp_path / "a_fold_0", 0.93, 0.93)
    with pytest.raises(DatasetError, match="ensemble/metrics.json"):
        compare_runs(tmp_path)
