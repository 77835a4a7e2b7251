"""The information figure's computation: hand-checked on a two-token vocabulary, then run for real on
the shipped sum model at small size."""

from __future__ import annotations

import math

import pytest
import torch

from sdpg.training.information import measure_information, summarise, token_information

L3, L4, L9 = math.log(3), math.log(4), math.log(9)


def _example():
    # two correct samples, three positions, vocabulary {0, 1}; the last position is padding
    student = torch.tensor(
        [
            [[0.0, 0.0], [L9, 0.0], [5.0, -5.0]],  # p = (.5, .5), (.9, .1), padding
            [[0.0, 0.0], [0.0, 0.0], [5.0, -5.0]],  # p = (.5, .5), (.5, .5), padding
        ]
    )  # [B=2, T=3, V=2]
    teacher = torch.tensor(
        [
            [[L3, 0.0], [L9, 0.0], [-5.0, 5.0]],  # q = (.75, .25), (.9, .1)
            [[0.0, L4], [0.0, 0.0], [-5.0, 5.0]],  # q = (.2, .8), (.5, .5)
        ]
    )  # [B, T, V]
    tokens = torch.tensor([[0, 0, 1], [0, 1, 1]])  # [B, T]
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # [B, T]
    return student, teacher, tokens, mask


def test_token_information_by_hand():
    per = token_information(*_example(), threshold=0.5)
    kl_a = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # 0.1438
    kl_b = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)  # 0.2231
    assert per["kl"] == pytest.approx(torch.tensor([[kl_a, 0.0, 0.0], [kl_b, 0.0, 0.0]]), abs=1e-6)
    h_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # 0.325 nats: below the threshold
    assert per["entropy"] == pytest.approx(torch.tensor([[math.log(2), h_09, 0.0], [math.log(2), math.log(2), 0.0]]), abs=1e-6)
    assert per["uncertain"].tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    logq = [[math.log(0.75), math.log(0.9), 0], [math.log(0.2), math.log(0.5), 0]]
    assert per["logq"] == pytest.approx(torch.tensor(logq), abs=1e-6)


def test_summary_by_hand():
    s = summarise(token_information(*_example(), threshold=0.5), samples=5, threshold=0.5)
    kl_a = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_b = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert (s.samples, s.correct, s.tokens, s.uncertain) == (5, 2, 4, 3)
    assert s.kl_mean == pytest.approx((kl_a + kl_b) / 4)
    assert s.kl_sum_per_sample == pytest.approx((kl_a + kl_b) / 2)
    assert s.uncertain_fraction == 0.75 and s.kl_share_uncertain == pytest.approx(1.0)
    # uncertain tokens: (p, q) of the sampled token = (.5, .75), (.5, .2), (.5, .5): one of three higher, ties are not
    assert s.teacher_higher_fraction == pytest.approx(1 / 3)
    assert s.prob_gain_mean == pytest.approx((0.25 - 0.3 + 0.0) / 3)
    assert s.logratio_mean == pytest.approx((math.log(1.5) + math.log(0.4) + 0.0) / 3)
    assert s.student_p_mean == pytest.approx(0.5) and s.teacher_q_mean == pytest.approx((0.75 + 0.2 + 0.5) / 3)
    assert s.kl_by_position == pytest.approx([(kl_a + kl_b) / 2, 0.0]) and s.tokens_by_position == [2, 2]
    # split by whether a sample wrote the reference solution: sample 0 (one uncertain token, raised), sample 1 (two, neither)
    split = summarise(token_information(*_example(), threshold=0.5), 5, 0.5, reference=torch.tensor([True, False]))
    assert split.reference_fraction == 0.5 and split.teacher_higher_fraction_reference == 1.0
    assert split.teacher_higher_fraction_other == 0.0 and split.uncertain_other_fraction == pytest.approx(2 / 3)
    # a teacher that echoes the student adds nothing
    student, _, tokens, mask = _example()
    echo = summarise(token_information(student, student.clone(), tokens, mask), samples=2, threshold=0.5)
    assert echo.kl_mean == pytest.approx(0.0, abs=1e-7) and echo.teacher_higher_fraction == 0.0 and echo.prob_gain_mean == 0.0


def test_measure_information_on_the_shipped_sum_model(tiny_config):
    cfg = tiny_config("eval.max_new_tokens=32")
    stats, acc, per = measure_information(cfg, n_problems=6, n_samples=4, log=lambda *_: None)
    assert stats.samples == 24 and stats.correct == round(acc["student"] * 24) > 0
    assert acc["teacher"] > acc["student"]  # the reference solution helps the shipped model
    assert sum(stats.tokens_by_position) == stats.tokens == int(per["mask"].sum())
    assert 0 <= stats.reference_fraction <= 1 and per["reference"].shape == (stats.correct,)
    assert stats.kl_mean > 0 and 0 < stats.uncertain <= stats.tokens
    again, acc2, _ = measure_information(cfg, n_problems=6, n_samples=4, log=lambda *_: None)
    assert repr(again) == repr(stats) and acc2 == acc  # seeded (repr: NaN where no sample wrote the reference)
